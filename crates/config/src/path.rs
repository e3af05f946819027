//! Key paths such as `apps[1].services[0].ports[2].port`: building them and splitting them into
//! segments for the locators.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// `base.key`, quoting `key` when it is not a bare word (`regions."us.east"`).
pub(crate) fn key(base: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
    };
    if base.is_empty() {
        key
    } else {
        format!("{base}.{key}")
    }
}

/// `base[index]`.
pub(crate) fn index(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

/// Split a path built by [`key`] and [`index`] back into segments. Never fails: text it does not
/// understand ends the path.
pub(crate) fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '.' => {
                chars.next();
            }
            '[' => {
                chars.next();
                let mut digits = String::new();
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                    digits.push(d);
                }
                match digits.parse() {
                    Ok(i) => out.push(Seg::Index(i)),
                    Err(_) => return out,
                }
            }
            '"' => {
                chars.next();
                let mut k = String::new();
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => k.extend(chars.next()),
                        '"' => break,
                        _ => k.push(d),
                    }
                }
                out.push(Seg::Key(k));
            }
            _ => {
                let mut k = String::new();
                while let Some(&d) = chars.peek() {
                    if d == '.' || d == '[' {
                        break;
                    }
                    k.push(d);
                    chars.next();
                }
                out.push(Seg::Key(k));
            }
        }
    }
    out
}

/// Render segments produced by a serde path tracker below `base`.
pub(crate) fn join(base: &str, segs: &[Seg]) -> String {
    segs.iter().fold(base.to_string(), |acc, s| match s {
        Seg::Key(k) => key(&acc, k),
        Seg::Index(i) => index(&acc, *i),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = index(&key(&key("", "apps"), "services"), 2);
        let p = key(&key(&p, "a.b"), "port");
        assert_eq!(p, "apps.services[2].\"a.b\".port");
        assert_eq!(
            segments(&p),
            vec![
                Seg::Key("apps".into()),
                Seg::Key("services".into()),
                Seg::Index(2),
                Seg::Key("a.b".into()),
                Seg::Key("port".into()),
            ]
        );
        assert_eq!(join("x", &segments(&p)), format!("x.{p}"));
    }
}
