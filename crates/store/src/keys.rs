//! The key layout under the prefix (default `/anyedge`): `apps/<app>`,
//! `instances/<app>/<instance>`, `nodes/<node>`. Other keys under the prefix (certificates,
//! challenges) belong to other parts and are ignored here.

/// The default prefix of every key.
pub const DEFAULT_PREFIX: &str = "/anyedge";

/// A key this store understands.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    App(String),
    Instance { app: String, id: String },
    Node(String),
}

/// Builds and parses keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// With a trailing `/`.
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: format!("{}/", prefix.trim_end_matches('/')),
        }
    }

    /// Every key of the catalog (the prefix, with its trailing `/`).
    pub fn all(&self) -> String {
        self.prefix.clone()
    }

    pub fn apps(&self) -> String {
        format!("{}apps/", self.prefix)
    }

    pub fn instances(&self) -> String {
        format!("{}instances/", self.prefix)
    }

    pub fn key(&self, key: &Key) -> String {
        match key {
            Key::App(app) => format!("{}apps/{app}", self.prefix),
            Key::Instance { app, id } => format!("{}instances/{app}/{id}", self.prefix),
            Key::Node(node) => format!("{}nodes/{node}", self.prefix),
        }
    }

    /// The key `raw` names, or `None` for keys outside this layout (other prefixes, other
    /// kinds, empty or extra path segments, non-UTF-8).
    pub fn parse(&self, raw: &[u8]) -> Option<Key> {
        let rest = std::str::from_utf8(raw).ok()?.strip_prefix(&self.prefix)?;
        let (kind, rest) = rest.split_once('/')?;
        let segs: Vec<&str> = rest.split('/').collect();
        if segs.iter().any(|s| s.is_empty()) {
            return None;
        }
        match (kind, segs.as_slice()) {
            ("apps", [app]) => Some(Key::App((*app).to_string())),
            ("nodes", [node]) => Some(Key::Node((*node).to_string())),
            ("instances", [app, id]) => Some(Key::Instance {
                app: (*app).to_string(),
                id: (*id).to_string(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strangers_are_ignored() {
        let k = Keys::new("/anyedge/");
        for key in [
            Key::App("hello".into()),
            Key::Instance {
                app: "hello".into(),
                id: "i-1".into(),
            },
            Key::Node("ord-1".into()),
        ] {
            assert_eq!(k.parse(k.key(&key).as_bytes()), Some(key));
        }
        assert_eq!(k.key(&Key::App("a".into())), "/anyedge/apps/a");
        for raw in [
            &b"/anyedge/apps/"[..],
            b"/anyedge/apps/a/b",
            b"/anyedge/instances/a",
            b"/anyedge/instances/a//",
            b"/anyedge/certs/example.com",
            b"/other/apps/a",
            b"/anyedge/apps/\xff",
        ] {
            assert_eq!(k.parse(raw), None, "{raw:?}");
        }
    }
}
