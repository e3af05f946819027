//! Rules that span apps: who owns a port, a hostname, an app name.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::model::{Handler, ProxyProtoVersion};
use crate::report::Report;
use crate::validate::values::show_handlers;

/// One edge port as declared by one app, with the path to report it at.
#[derive(Debug, Clone)]
pub(crate) struct PortUse {
    pub app: String,
    pub path: String,
    pub port: u16,
    pub bind: Option<IpAddr>,
    pub handlers: Vec<Handler>,
    pub proxy_proto: Option<ProxyProtoVersion>,
}

impl PortUse {
    fn is_raw_tcp(&self) -> bool {
        self.handlers.iter().all(|h| *h == Handler::ProxyProto)
    }

    fn place(&self) -> String {
        match self.bind {
            Some(ip) => format!("port {} on {ip}", self.port),
            None => format!("port {}", self.port),
        }
    }

    fn stack(&self) -> String {
        match self.proxy_proto {
            Some(ProxyProtoVersion::V1) => {
                format!("{} (proxy_proto v1)", show_handlers(&self.handlers))
            }
            Some(ProxyProtoVersion::V2) => {
                format!("{} (proxy_proto v2)", show_handlers(&self.handlers))
            }
            None => show_handlers(&self.handlers),
        }
    }
}

/// How strictly ports are owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortRule {
    /// anyedge TOML: HTTP and TLS ports are shared between apps (routed by Host and SNI); a raw
    /// TCP port belongs to one app per bind address; one (bind, port) has one handler list.
    Shared,
    /// The work sample: a port belongs to one app, and is listed once.
    Exclusive,
}

/// Report every port that clashes with an earlier declaration of the same (bind, port), or
/// whose listener would overlap an earlier one on the same port.
pub(crate) fn ports(uses: &[PortUse], rule: PortRule, report: &mut Report<'_>) {
    let mut first: HashMap<(Option<IpAddr>, u16), &PortUse> = HashMap::new();
    for u in uses {
        let message = match first.get(&(u.bind, u.port)).copied() {
            Some(f) => clash(f, u, rule, report),
            None => {
                first.insert((u.bind, u.port), u);
                None
            }
        };
        if let Some(message) = message {
            report.error(&u.path, message);
        }
    }
}

/// What is wrong with `u` declaring the same (bind, port) as `f` did, if anything.
fn clash(f: &PortUse, u: &PortUse, rule: PortRule, report: &Report<'_>) -> Option<String> {
    let at = report.place_of(&f.path);
    let (place, app) = (u.place(), &f.app);
    Some(if rule == PortRule::Exclusive {
        if f.app == u.app {
            format!("{place} is listed twice in app `{app}`{at}")
        } else {
            format!("{place} is already used by app `{app}`{at}; a port may belong to one app only")
        }
    } else if f.handlers != u.handlers || f.proxy_proto != u.proxy_proto {
        format!(
            "{place} is declared with handlers {} here but with {} by app `{app}`{at}; one port has one handler list",
            u.stack(),
            f.stack(),
        )
    } else if f.app == u.app {
        format!("{place} is declared twice in app `{app}`{at}; each port of an app belongs to one service")
    } else if u.is_raw_tcp() {
        let every = if u.bind.is_some() {
            ""
        } else {
            " on every address"
        };
        format!(
            "raw TCP {place}{every} is already used by app `{app}`{at}; a raw TCP port belongs to one app per bind address (set `bind` to give each app its own address)"
        )
    } else {
        return None;
    })
}

/// One hostname claimed by one app (lower-cased).
#[derive(Debug, Clone)]
pub(crate) struct HostUse {
    pub app: String,
    pub path: String,
    pub name: String,
}

/// Report every hostname claimed twice. Names are compared lower-cased; `*.example.com` and
/// `a.example.com` are different names (the more specific wins at routing time).
pub(crate) fn hostnames(uses: &[HostUse], report: &mut Report<'_>) {
    let mut first: HashMap<&str, &HostUse> = HashMap::new();
    for u in uses {
        let Some(f) = first.get(u.name.as_str()).copied() else {
            first.insert(&u.name, u);
            continue;
        };
        let at = report.place_of(&f.path);
        let message = if f.app == u.app {
            format!(
                "hostname `{}` is listed twice in app `{}`{at}",
                u.name, u.app
            )
        } else {
            format!(
                "hostname `{}` is already claimed by app `{}`{at}; a hostname belongs to one app",
                u.name, f.app
            )
        };
        report.error(&u.path, message);
    }
}

/// Report every repeated name in `names` (name, path). `what` is e.g. "app name".
pub(crate) fn unique(what: &str, names: &[(String, String)], report: &mut Report<'_>) {
    let mut first: HashMap<&str, &str> = HashMap::new();
    for (name, path) in names {
        if name.is_empty() {
            continue;
        }
        match first.get(name.as_str()).copied() {
            None => {
                first.insert(name, path);
            }
            Some(f) => {
                let at = report.place_of(f);
                report.error(path, format!("duplicate {what} `{name}`{at}"));
            }
        }
    }
}
