//! The edge's routing table for one snapshot: which app and service each (address, port) serves,
//! with the per-app metric handles resolved once.

use anyedge_catalog::{AppEntry, Snapshot};
use anyedge_config::{Limits, ProxyProtoVersion};
use anyedge_telemetry::{AppMetrics, Metrics};
use std::collections::{BTreeSet, HashMap};
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

#[derive(Default)]
pub(crate) struct Routes {
    /// Keyed by (port, bind address); `None` is the wildcard.
    tcp: HashMap<(u16, Option<IpAddr>), Arc<TcpRoute>>,
    pub limits: Limits,
}

impl Routes {
    pub fn build(snapshot: &Snapshot, metrics: &Metrics) -> Routes {
        let mut tcp = HashMap::new();
        for app in snapshot.apps.values() {
            let app_metrics = metrics.app(&app.name);
            for (service_index, service) in app.config.services.iter().enumerate() {
                for port in service.ports.iter().filter(|p| p.is_raw_tcp()) {
                    let route = TcpRoute {
                        app: app.clone(),
                        service: service_index,
                        proxy_proto: port.proxy_proto,
                        metrics: app_metrics.clone(),
                    };
                    tcp.insert((port.port, port.bind), Arc::new(route));
                }
                for port in service.ports.iter().filter(|p| !p.is_raw_tcp()) {
                    tracing::warn!(app = %app.name, port = port.port, "HTTP and TLS handlers are not served yet; port skipped");
                }
            }
        }
        Routes {
            limits: snapshot.config.limits.clone(),
            tcp,
        }
    }

    /// The route for a connection accepted on `local`: the app bound to that exact address
    /// first, then the port's wildcard app.
    pub fn tcp(&self, local: SocketAddr) -> Option<&Arc<TcpRoute>> {
        let ip = local.ip().to_canonical();
        self.tcp
            .get(&(local.port(), Some(ip)))
            .or_else(|| self.tcp.get(&(local.port(), None)))
    }

    /// The sockets to listen on. Linux refuses `127.0.0.2:P` while `0.0.0.0:P` is held, so a port
    /// with any wildcard user gets one wildcard listener and routes by local address.
    pub fn listen_addrs(&self) -> BTreeSet<ListenAddr> {
        let wildcard: BTreeSet<u16> = self
            .tcp
            .keys()
            .filter(|(_, bind)| bind.is_none())
            .map(|(port, _)| *port)
            .collect();
        self.tcp
            .keys()
            .map(|&(port, bind)| match bind {
                Some(ip) if !wildcard.contains(&port) => ListenAddr::One(SocketAddr::new(ip, port)),
                _ => ListenAddr::Any(port),
            })
            .collect()
    }
}
