//! The edge's routing table for one snapshot: what each (address, port) serves — one raw TCP
//! app, or HTTP for the apps whose hostnames it carries — with per-app metric handles and
//! instance connection pools resolved once, so the hot path does no map lookups beyond the host.

use crate::backhaul::{Backhaul, Remote};
use crate::instance::headers::Prefixed;
use crate::instance::pool::{PoolKey, Pools, UpstreamPool};
use anyedge_catalog::{AppEntry, Snapshot};
use anyedge_config::{Http, Limits, ProxyProtoVersion};
use anyedge_telemetry::{AppMetrics, Metrics};
use http::HeaderValue;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Where a listener listens: every address of the port, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ListenAddr {
    Any(u16),
    One(SocketAddr),
}

/// What a raw TCP port does.
pub(crate) struct TcpRoute {
    pub app: Arc<AppEntry>,
    pub service: usize,
    pub proxy_proto: Option<ProxyProtoVersion>,
    pub metrics: Arc<AppMetrics>,
}

impl TcpRoute {
    pub fn service(&self) -> &anyedge_config::Service {
        &self.app.config.services[self.service]
    }
}

/// One app as an HTTP port sees it.
pub(crate) struct HttpApp {
    pub app: Arc<AppEntry>,
    pub service: usize,
    pub metrics: Arc<AppMetrics>,
    /// Parallel to `app.instances`.
    pub pools: Vec<Arc<UpstreamPool>>,
    /// Parallel to `app.instances`: for each one on another node, the backhaul link to that
    /// node and the stream headers naming it.
    pub remotes: Vec<Option<Remote>>,
}

impl HttpApp {
    pub fn service(&self) -> &anyedge_config::Service {
        &self.app.config.services[self.service]
    }
}

/// The maps every request looks up (its port, its host, a replay's app). Their keys come from
/// the config, never from a client, so a fast hash (foldhash, seeded per map) serves: a
/// client chooses only what is looked up, which cannot grow a chain. SipHash cost about 650
/// instructions per request here.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An HTTP port (plain or TLS) shared by many apps, routed by host.
pub(crate) struct HttpPort {
    pub tls: bool,
    exact: FastMap<String, Arc<HttpApp>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: FastMap<String, Arc<HttpApp>>,
}

impl HttpPort {
    /// The app for a lower-cased host without port: exact name first, then the wildcard of its
    /// parent domain (one label only).
    pub fn app(&self, host: &str) -> Option<&Arc<HttpApp>> {
        self.exact.get(host).or_else(|| {
            host.split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
        })
    }
}

pub(crate) enum PortRoute {
    Tcp(Arc<TcpRoute>),
    Http(Arc<HttpPort>),
}

/// Node-wide HTTP settings of one snapshot.
pub(crate) struct HttpSettings {
    pub config: Http,
    pub names: Prefixed,
    pub region: HeaderValue,
    pub region_name: Arc<str>,
}

pub(crate) struct Routes {
    /// Keyed by (port, bind address); `None` is the wildcard.
    ports: FastMap<(u16, Option<IpAddr>), PortRoute>,
    /// Each app's HTTP services, by app name, in config order (the first is the target of a
    /// replay into another app; a worker picks the one the stream's edge port belongs to).
    http_apps: FastMap<Arc<str>, Vec<Arc<HttpApp>>>,
    /// HTTP services built afresh for these routes; the others are the previous routes'.
    pub built: usize,
    pub limits: Limits,
    pub http: Arc<HttpSettings>,
    /// Certificates and TLS configs of this snapshot.
    pub tls: Option<Arc<anyedge_tls::TlsServer>>,
    /// The snapshot these routes were built from (the worker and the load feed look up
    /// instances in it).
    pub snapshot: Option<Arc<Snapshot>>,
    /// Whether this node has the edge role: only then does it listen on apps' ports.
    edge: bool,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            ports: FastMap::default(),
            http_apps: FastMap::default(),
            built: 0,
            limits: Limits::default(),
            http: Arc::new(settings(&Http::default(), "local")),
            tls: None,
            snapshot: None,
            edge: true,
        }
    }
}

fn settings(http: &Http, region: &str) -> HttpSettings {
    HttpSettings {
        config: http.clone(),
        names: Prefixed::new(&http.header_prefix),
        region: HeaderValue::try_from(region).unwrap_or_else(|_| HeaderValue::from_static("local")),
        region_name: region.into(),
    }
}

/// The tables a snapshot's routes are built into, app by app.
#[derive(Default)]
struct Builder<'p> {
    ports: FastMap<(u16, Option<IpAddr>), PortRoute>,
    http_ports: HashMap<(u16, Option<IpAddr>), HttpPort>,
    http_apps: FastMap<Arc<str>, Vec<Arc<HttpApp>>>,
    /// The previous routes' HTTP services by app: an app whose entry did not change keeps
    /// them (its pools and backhaul targets) as they are.
    prev: Option<&'p FastMap<Arc<str>, Vec<Arc<HttpApp>>>>,
    /// The pools of the services built afresh; pools of the previous routes' services that are
    /// neither reused nor among these are dropped.
    pool_keys: HashSet<PoolKey>,
    /// HTTP services built afresh (the others were reused).
    built: usize,
}

impl Builder<'_> {
    /// Every port of every service of `app`.
    fn app(
        &mut self,
        app: &Arc<AppEntry>,
        metrics: &Arc<AppMetrics>,
        pools: &Pools,
        bh: &Backhaul,
    ) {
        for (index, service) in app.config.services.iter().enumerate() {
            let mut http_app = None;
            for port in &service.ports {
                let key = (port.port, port.bind);
                if port.is_raw_tcp() {
                    let route = TcpRoute {
                        app: app.clone(),
                        service: index,
                        proxy_proto: port.proxy_proto,
                        metrics: metrics.clone(),
                    };
                    self.ports.insert(key, PortRoute::Tcp(Arc::new(route)));
                    continue;
                }
                let entry = http_app
                    .get_or_insert_with(|| self.http_app(app, index, metrics, pools, bh))
                    .clone();
                let tls = port.handlers.contains(&anyedge_config::Handler::Tls);
                self.hosts(key, tls, app, &entry);
            }
        }
    }

    /// `app`'s HTTP service `index`: its instances' pools and backhaul links, as the previous
    /// routes had them when the app's entry is the same.
    fn http_app(
        &mut self,
        app: &Arc<AppEntry>,
        index: usize,
        metrics: &Arc<AppMetrics>,
        pools: &Pools,
        backhaul: &Backhaul,
    ) -> Arc<HttpApp> {
        let reused = self
            .prev
            .and_then(|p| p.get(&app.name))
            .into_iter()
            .flatten()
            .find(|h| h.service == index && Arc::ptr_eq(&h.app, app));
        let entry = match reused {
            Some(h) => h.clone(),
            None => self.new_http_app(app, index, metrics, pools, backhaul),
        };
        self.http_apps
            .entry(app.name.clone())
            .or_default()
            .push(entry.clone());
        entry
    }

    fn new_http_app(
        &mut self,
        app: &Arc<AppEntry>,
        index: usize,
        metrics: &Arc<AppMetrics>,
        pools: &Pools,
        backhaul: &Backhaul,
    ) -> Arc<HttpApp> {
        self.built += 1;
        let service = &app.config.services[index];
        let pools = app.instances.iter().map(|i| {
            let key = PoolKey {
                id: i.id.clone(),
                host: i.address.host.clone(),
                port: i.address.port.or(service.internal_port),
            };
            let pool = pools.get(&key);
            self.pool_keys.insert(key);
            pool
        });
        let remotes = app.instances.iter().map(|i| {
            let link = backhaul.link(i.peer.as_ref()?);
            Some(Remote::new(link, &app.name, i.id.instance()))
        });
        Arc::new(HttpApp {
            app: app.clone(),
            service: index,
            metrics: metrics.clone(),
            pools: pools.collect(),
            remotes: remotes.collect(),
        })
    }

    /// The pools the previous routes' services used that no service of these routes uses:
    /// those of services not reused, less those built afresh.
    fn pools_gone(&self) -> Vec<PoolKey> {
        let Some(prev) = self.prev else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for (name, services) in prev {
            let now = self.http_apps.get(name);
            for old in services {
                if now.is_some_and(|n| n.iter().any(|h| Arc::ptr_eq(h, old))) {
                    continue;
                }
                let port = old.service().internal_port;
                gone.extend(old.app.instances.iter().map(|i| PoolKey {
                    id: i.id.clone(),
                    host: i.address.host.clone(),
                    port: i.address.port.or(port),
                }));
            }
        }
        gone.retain(|k| !self.pool_keys.contains(k));
        gone
    }

    /// `app`'s hostnames on the HTTP port `key`.
    fn hosts(
        &mut self,
        key: (u16, Option<IpAddr>),
        tls: bool,
        app: &AppEntry,
        entry: &Arc<HttpApp>,
    ) {
        let hp = self.http_ports.entry(key).or_insert_with(|| HttpPort {
            tls,
            exact: FastMap::default(),
            wildcard: FastMap::default(),
        });
        for host in &app.config.hostnames {
            match host.strip_prefix("*.") {
                Some(parent) => hp.wildcard.insert(parent.to_string(), entry.clone()),
                None => hp.exact.insert(host.clone(), entry.clone()),
            };
        }
    }
}

impl Routes {
    /// The routes of `snapshot`. The HTTP services of apps whose entry `prev` (the routes in
    /// force) has are reused with their pools and backhaul targets; only changed apps' are
    /// built, and only their old pools are dropped.
    pub fn build(
        snapshot: &Arc<Snapshot>,
        prev: Option<&Routes>,
        metrics: &Metrics,
        pools: &Pools,
        backhaul: &Backhaul,
        tls: Arc<anyedge_tls::TlsServer>,
    ) -> Routes {
        let mut b = Builder {
            prev: prev.map(|p| &p.http_apps),
            ..Builder::default()
        };
        for app in snapshot.apps.values() {
            let m = match b
                .prev
                .and_then(|p| p.get(&app.name))
                .and_then(|s| s.first())
            {
                Some(h) => h.metrics.clone(),
                None => metrics.app(&app.name),
            };
            b.app(app, &m, pools, backhaul);
        }
        let gone = b.pools_gone();
        let mut ports = b.ports;
        for (key, hp) in b.http_ports {
            ports.insert(key, PortRoute::Http(Arc::new(hp)));
        }
        match prev {
            Some(_) => pools.remove(&gone),
            None => pools.retain(|key| b.pool_keys.contains(key)),
        }
        backhaul.retain(|peer| snapshot.config.peers.contains_key(peer));
        let config = &snapshot.config;
        Routes {
            ports,
            http_apps: b.http_apps,
            built: b.built,
            limits: config.limits.clone(),
            http: Arc::new(settings(&config.http, &config.node.region)),
            tls: Some(tls),
            snapshot: Some(snapshot.clone()),
            edge: config.node.roles.edge,
        }
    }

    /// An app with an HTTP service, by name.
    pub fn http_app(&self, name: &str) -> Option<&Arc<HttpApp>> {
        self.http_apps.get(name)?.first()
    }

    /// The app's HTTP service that serves edge port `port`, else its first HTTP service.
    pub fn http_app_on(&self, name: &str, port: u16) -> Option<&Arc<HttpApp>> {
        let services = self.http_apps.get(name)?;
        let serves = |a: &&Arc<HttpApp>| a.service().ports.iter().any(|p| p.port == port);
        services.iter().find(serves).or_else(|| services.first())
    }

    /// The route for a connection accepted on `local`: the exact bind address first, then the
    /// port's wildcard.
    pub fn port(&self, local: SocketAddr) -> Option<&PortRoute> {
        let ip = local.ip().to_canonical();
        self.ports
            .get(&(local.port(), Some(ip)))
            .or_else(|| self.ports.get(&(local.port(), None)))
    }

    /// The sockets to listen on. Linux refuses `127.0.0.2:P` while `0.0.0.0:P` is held, so a port
    /// with any wildcard user gets one wildcard listener and routes by local address.
    pub fn listen_addrs(&self) -> BTreeSet<ListenAddr> {
        if !self.edge {
            return BTreeSet::new();
        }
        let wildcard: BTreeSet<u16> = self
            .ports
            .keys()
            .filter(|(_, bind)| bind.is_none())
            .map(|(port, _)| *port)
            .collect();
        self.ports
            .keys()
            .map(|&(port, bind)| match bind {
                Some(ip) if !wildcard.contains(&port) => ListenAddr::One(SocketAddr::new(ip, port)),
                _ => ListenAddr::Any(port),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
