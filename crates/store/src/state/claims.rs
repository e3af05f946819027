//! What apps claim across each other (hostnames, listeners), checked when apps come from etcd
//! one key at a time: the same rules `docs/config.md` gives for one file. The first app by
//! name keeps a claim; a later app that clashes is refused whole.

use anyedge_config::{App, Handler, ProxyProtoVersion};
use std::collections::HashMap;
use std::net::IpAddr;

type Listener = (Option<IpAddr>, u16);

#[derive(Default)]
pub struct Claims {
    hosts: HashMap<String, String>,
    listeners: HashMap<Listener, (String, Vec<Handler>, Option<ProxyProtoVersion>)>,
}

impl Claims {
    /// Check `app` against the claims so far; if it clashes with none, add its own.
    pub fn claim(&mut self, app: &App) -> Result<(), String> {
        for h in &app.hostnames {
            if let Some(owner) = self.hosts.get(h).filter(|o| **o != app.name) {
                return Err(format!("hostname {h} belongs to app `{owner}`"));
            }
        }
        for s in &app.services {
            for p in &s.ports {
                let Some((owner, handlers, pp)) = self.listeners.get(&(p.bind, p.port)) else {
                    continue;
                };
                let at = match p.bind {
                    Some(ip) => format!("{ip}:{}", p.port),
                    None => format!("port {}", p.port),
                };
                if *handlers != p.handlers || *pp != p.proxy_proto {
                    return Err(format!("{at} has other handlers in app `{owner}`"));
                }
                if p.is_raw_tcp() {
                    return Err(format!("raw TCP {at} belongs to app `{owner}`"));
                }
            }
        }
        for h in &app.hostnames {
            self.hosts.insert(h.clone(), app.name.clone());
        }
        for s in &app.services {
            for p in &s.ports {
                self.listeners
                    .entry((p.bind, p.port))
                    .or_insert_with(|| (app.name.clone(), p.handlers.clone(), p.proxy_proto));
            }
        }
        Ok(())
    }
}
