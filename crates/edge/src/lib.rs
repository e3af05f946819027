//! The edge: where clients connect. Listeners are opened and closed by diffing catalog snapshots
//! (a file reload and, later, an etcd event take the same path); each accepted connection is
//! routed by its local address and port, admitted against the node, client-IP and app budgets,
//! placed on an instance, and proxied.

mod connect;
mod http;
mod listeners;
pub mod proxy_protocol;
mod routes;
mod splice;
mod tcp;

pub use listeners::ListenError;

use anyedge_admission::{Budget, PerKeyBudget};
use anyedge_catalog::Snapshot;
use anyedge_core::Drain;
use anyedge_telemetry::Metrics;
use arc_swap::ArcSwap;
use listeners::ListenerSet;
use routes::Routes;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

/// State shared by every listener and connection of one node's edge.
struct Shared {
    routes: ArcSwap<Routes>,
    metrics: Arc<Metrics>,
    drain: Drain,
    /// Open client connections on this node (`[limits] max_connections`).
    node_connections: Budget,
    per_ip: PerKeyBudget<IpAddr>,
    resolver: connect::Resolver,
    pipes: splice::PipePool,
    /// Connections to instances, by stable instance id.
    pools: http::upstream::Pools,
}

/// One node's edge role.
pub struct Edge {
    shared: Arc<Shared>,
    listeners: Mutex<ListenerSet>,
}

impl Edge {
    pub fn new(metrics: Arc<Metrics>, drain: Drain) -> Self {
        let shared = Arc::new(Shared {
            routes: ArcSwap::from_pointee(Routes::default()),
            metrics,
            drain,
            node_connections: Budget::new(),
            per_ip: PerKeyBudget::new(),
            resolver: connect::Resolver::default(),
            pipes: splice::PipePool::default(),
            pools: http::upstream::Pools::default(),
        });
        Edge {
            shared,
            listeners: Mutex::new(ListenerSet::default()),
        }
    }

    /// Put a snapshot in force: new connections route by it at once; listeners it no longer
    /// names close, new ones open. Connections already open are untouched. Returns the
    /// listeners that could not be opened (they are tried again on the next apply).
    pub fn apply(&self, snapshot: Arc<Snapshot>) -> Vec<ListenError> {
        let routes = Arc::new(Routes::build(
            &snapshot,
            &self.shared.metrics,
            &self.shared.pools,
        ));
        let wanted = routes.listen_addrs();
        self.shared.routes.store(routes);
        let mut set = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.apply(&wanted, &self.shared)
    }

    /// Close every listener (the node is stopping). Open connections go on.
    pub fn stop_accepting(&self) {
        let mut set = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.close_all(&self.shared);
    }

    /// Addresses listened on now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        let set = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.addrs()
    }

    /// Pipes held in the splice pool (two descriptors each), for descriptor accounting.
    pub fn idle_pipes(&self) -> usize {
        self.shared.pipes.idle()
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> u32 {
        self.shared.node_connections.in_use()
    }
}
