//! The edge's routing table for one snapshot: what each (address, port) serves — one raw TCP
//! app, or HTTP for the apps whose hostnames it carries — with per-app metric handles and
//! instance connection pools resolved once, so the hot path does no map lookups beyond the host.
//! Routes built on the routes in force are updated by the snapshot's diff: the apps it built
//! and the apps gone are taken out and put in, and the other apps' entries are the previous
//! routes' (the tables copied on write by shard, not refilled; their services, pools and
//! backhaul targets shared).

use crate::backhaul::{Backhaul, Remote};
use crate::instance::headers::Prefixed;
use crate::instance::pool::{PoolKey, Pools, UpstreamPool};
use anyedge_catalog::{AppEntry, AppsDiff, Shards, Snapshot};
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

/// One app's HTTP services (shared, so that routes built on others copy a pointer).
type Services = Arc<[Arc<HttpApp>]>;

/// A port, and the address it is bound to (`None`: every address).
type PortAt = (u16, Option<IpAddr>);

/// An HTTP port (plain or TLS) shared by many apps, routed by host.
#[derive(Clone)]
pub(crate) struct HttpPort {
    pub tls: bool,
    /// Sharded and copied on write ([`Shards`]): routes updated by a change to one app copy
    /// the shards it touches, not a pointer per hostname; a lookup costs one more (fast) hash.
    exact: Shards<Arc<HttpApp>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: Shards<Arc<HttpApp>>,
    /// How many apps' services use the port: it goes with the last one.
    users: usize,
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

#[derive(Clone)]
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
    ports: FastMap<PortAt, PortRoute>,
    /// Each app's HTTP services, by app name, in config order (the first is the target of a
    /// replay into another app; a worker picks the one the stream's edge port belongs to).
    http_apps: Shards<Services>,
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
            http_apps: Shards::default(),
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

/// The tables a snapshot's routes are built into, app by app: from nothing, or from the
/// routes in force (whose tables are copied and then changed by the snapshot's diff).
#[derive(Default)]
struct Builder<'p> {
    ports: FastMap<PortAt, PortRoute>,
    /// The HTTP ports being changed: taken out of `ports` (a copy) at their first change.
    http_ports: FastMap<PortAt, HttpPort>,
    http_apps: Shards<Services>,
    /// The previous routes' HTTP services by app: an app whose entry did not change keeps
    /// them (its pools and backhaul targets) as they are.
    prev: Option<&'p Shards<Services>>,
    /// The pools of the services built afresh; pools of the previous routes' services that are
    /// neither reused nor among these are dropped.
    pool_keys: HashSet<PoolKey>,
    /// HTTP services built afresh (the others were reused).
    built: usize,
}

impl<'p> Builder<'p> {
    /// A builder that starts from `prev`'s tables.
    fn on(prev: &'p Routes) -> Builder<'p> {
        Builder {
            ports: prev.ports.clone(),
            http_apps: prev.http_apps.clone(),
            prev: Some(&prev.http_apps),
            ..Builder::default()
        }
    }

    /// Every port of every service of `app`.
    fn app(
        &mut self,
        app: &Arc<AppEntry>,
        metrics: &Arc<AppMetrics>,
        pools: &Pools,
        bh: &Backhaul,
    ) {
        let mut services = Vec::new();
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
                let entry = match &http_app {
                    Some(entry) => Arc::clone(entry),
                    None => {
                        let entry = self.http_app(app, index, metrics, pools, bh);
                        services.push(entry.clone());
                        http_app.insert(entry).clone()
                    }
                };
                let tls = port.handlers.contains(&anyedge_config::Handler::Tls);
                self.hosts(key, tls, app, &entry);
            }
        }
        if !services.is_empty() {
            self.http_apps.insert(app.name.clone(), services.into());
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
            .flat_map(|s| s.iter())
            .find(|h| h.service == index && Arc::ptr_eq(&h.app, app));
        match reused {
            Some(h) => h.clone(),
            None => self.new_http_app(app, index, metrics, pools, backhaul),
        }
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

    /// The pools of `services` (previous routes' services no longer used) that no service
    /// built afresh uses.
    fn pools_of<'s>(&self, services: impl Iterator<Item = &'s Arc<HttpApp>>) -> Vec<PoolKey> {
        let mut gone = Vec::new();
        for old in services {
            let port = old.service().internal_port;
            gone.extend(old.app.instances.iter().map(|i| PoolKey {
                id: i.id.clone(),
                host: i.address.host.clone(),
                port: i.address.port.or(port),
            }));
        }
        gone.retain(|k| !self.pool_keys.contains(k));
        gone
    }

    /// The pools the previous routes' services used that no service of these routes uses:
    /// those of services not reused, less those built afresh.
    fn pools_gone(&self) -> Vec<PoolKey> {
        let Some(prev) = self.prev else {
            return Vec::new();
        };
        let unused = prev.iter().flat_map(|(name, services)| {
            let now = self.http_apps.get(name);
            services
                .iter()
                .filter(move |old| !now.is_some_and(|n| n.iter().any(|h| Arc::ptr_eq(h, old))))
        });
        self.pools_of(unused)
    }

    /// The HTTP port `key` to change: the one being changed, else a copy of the one in
    /// force, else a new one.
    fn port_mut(&mut self, key: PortAt, tls: bool) -> &mut HttpPort {
        let ports = &self.ports;
        self.http_ports
            .entry(key)
            .or_insert_with(|| match ports.get(&key) {
                Some(PortRoute::Http(hp)) => (**hp).clone(),
                _ => HttpPort {
                    tls,
                    exact: Shards::default(),
                    wildcard: Shards::default(),
                    users: 0,
                },
            })
    }

    /// `app`'s hostnames on the HTTP port `key`.
    fn hosts(&mut self, key: PortAt, tls: bool, app: &AppEntry, entry: &Arc<HttpApp>) {
        let hp = self.port_mut(key, tls);
        hp.users += 1;
        for host in &app.config.hostnames {
            match host.strip_prefix("*.") {
                Some(parent) => hp.wildcard.insert(parent.into(), entry.clone()),
                None => hp.exact.insert(host.as_str().into(), entry.clone()),
            };
        }
    }

    /// Take `old` (an app of the routes this builder started from) out of every table.
    fn remove(&mut self, old: &AppEntry) {
        let theirs = |h: &Arc<HttpApp>| h.app.name == old.name;
        for service in &old.config.services {
            for port in &service.ports {
                let key = (port.port, port.bind);
                if port.is_raw_tcp() {
                    if let Some(PortRoute::Tcp(t)) = self.ports.get(&key) {
                        if t.app.name == old.name {
                            self.ports.remove(&key);
                        }
                    }
                    continue;
                }
                if !matches!(self.ports.get(&key), Some(PortRoute::Http(_)))
                    && !self.http_ports.contains_key(&key)
                {
                    continue;
                }
                let hp = self.port_mut(key, false);
                hp.users = hp.users.saturating_sub(1);
                for host in &old.config.hostnames {
                    let (map, name) = match host.strip_prefix("*.") {
                        Some(parent) => (&mut hp.wildcard, parent),
                        None => (&mut hp.exact, host.as_str()),
                    };
                    if map.get(name).is_some_and(theirs) {
                        map.remove(name);
                    }
                }
            }
        }
        self.http_apps.remove(&old.name);
    }

    /// The finished port table: the HTTP ports changed put back (those no app uses any more
    /// gone).
    fn take_ports(&mut self) -> FastMap<PortAt, PortRoute> {
        let mut ports = std::mem::take(&mut self.ports);
        for (key, hp) in self.http_ports.drain() {
            if hp.users > 0 {
                ports.insert(key, PortRoute::Http(Arc::new(hp)));
            } else if matches!(ports.get(&key), Some(PortRoute::Http(_))) {
                ports.remove(&key);
            }
        }
        ports
    }

    /// The metric handles of app `name`: the previous routes' when they had the app.
    fn metrics(&self, name: &str, metrics: &Metrics) -> Arc<AppMetrics> {
        match self.prev.and_then(|p| p.get(name)).and_then(|s| s.first()) {
            Some(h) => h.metrics.clone(),
            None => metrics.app(name),
        }
    }
}

impl Routes {
    /// The routes of `snapshot`. Built on `prev` (the routes in force) when the snapshot was
    /// built on theirs: by its diff alone ([`Self::update`]). Otherwise every app is gone
    /// through, and the HTTP services of apps whose entry `prev` has are reused with their
    /// pools and backhaul targets; only changed apps' are built, and only their old pools are
    /// dropped.
    pub fn build(
        snapshot: &Arc<Snapshot>,
        prev: Option<&Routes>,
        metrics: &Metrics,
        pools: &Pools,
        backhaul: &Backhaul,
        tls: Arc<anyedge_tls::TlsServer>,
    ) -> Routes {
        let since = prev.and_then(|p| Some(p.snapshot.as_ref()?.generation));
        let diff = snapshot.diff.as_ref().filter(|d| Some(d.since) == since);
        let (ports, b) = match (prev, diff) {
            (Some(prev), Some(diff)) => {
                Routes::update(snapshot, prev, diff, metrics, pools, backhaul)
            }
            _ => Routes::fill(snapshot, prev, metrics, pools, backhaul),
        };
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

    /// Every app of `snapshot` into new tables.
    fn fill<'p>(
        snapshot: &Arc<Snapshot>,
        prev: Option<&'p Routes>,
        metrics: &Metrics,
        pools: &Pools,
        backhaul: &Backhaul,
    ) -> (FastMap<PortAt, PortRoute>, Builder<'p>) {
        let mut b = Builder {
            prev: prev.map(|p| &p.http_apps),
            ..Builder::default()
        };
        for app in snapshot.apps.values() {
            let m = b.metrics(&app.name, metrics);
            b.app(app, &m, pools, backhaul);
        }
        match prev {
            Some(_) => pools.remove(&b.pools_gone()),
            None => pools.retain(|key| b.pool_keys.contains(key)),
        }
        (b.take_ports(), b)
    }

    /// `prev`'s tables with the apps `diff` names taken out and those of `snapshot` put in:
    /// the work of the apps that changed, and a copy of the tables they are in.
    fn update<'p>(
        snapshot: &Arc<Snapshot>,
        prev: &'p Routes,
        diff: &AppsDiff,
        metrics: &Metrics,
        pools: &Pools,
        backhaul: &Backhaul,
    ) -> (FastMap<PortAt, PortRoute>, Builder<'p>) {
        let mut b = Builder::on(prev);
        let before = prev.snapshot.as_deref().map(|s| &s.apps);
        let mut old_services = Vec::new();
        for name in diff.built.iter().chain(&diff.gone) {
            if let Some(old) = before.and_then(|apps| apps.get(name)) {
                if let Some(services) = prev.http_apps.get(name) {
                    old_services.push(services.clone());
                }
                b.remove(old);
            }
        }
        for name in &diff.built {
            if let Some(app) = snapshot.apps.get(name) {
                let m = b.metrics(name, metrics);
                b.app(app, &m, pools, backhaul);
            }
        }
        let unused = old_services.iter().flat_map(|s| s.iter()).filter(|old| {
            let now = b.http_apps.get(&old.app.name);
            !now.is_some_and(|n| n.iter().any(|h| Arc::ptr_eq(h, old)))
        });
        pools.remove(&b.pools_of(unused));
        (b.take_ports(), b)
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
