//! Listening sockets, opened and closed by diffing the wanted set against the open one, and the
//! accept loop with its admission checks.

use super::tcp;
use crate::routes::{ListenAddr, PortRoute};
use crate::sockets::{
    accept_failed, adopt_or_bind, bind_one, next, spawn_on_shards, Accepting, HandoverSocket,
};
use crate::Shared;
use anyedge_core::control::{ListenKey, Role};
use anyedge_telemetry::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: String,
    #[source]
    pub source: io::Error,
}

struct Open {
    local: SocketAddr,
    /// One per shard, shared with its accept loop; dropping them stops the loops and closes
    /// the sockets (copied only to hand them over to a new process).
    accepting: Vec<Accepting>,
}

#[derive(Default)]
pub(crate) struct ListenerSet {
    open: BTreeMap<ListenAddr, Open>,
}

impl ListenerSet {
    /// Close the listeners `wanted` no longer names and open the missing ones; the errors of
    /// those that could not be opened (tried again on the next apply).
    pub fn apply(
        &mut self,
        wanted: &BTreeSet<ListenAddr>,
        shared: &Arc<Shared>,
    ) -> Vec<ListenError> {
        let stale: Vec<ListenAddr> = self
            .open
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        let gauge = &shared.metrics.node.listeners;
        for addr in stale {
            self.open.remove(&addr);
            gauge.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(?addr, "listener closed");
        }
        if shared.drain.is_draining() {
            return Vec::new();
        }
        let missing: Vec<ListenAddr> = wanted
            .iter()
            .filter(|a| !self.open.contains_key(a))
            .copied()
            .collect();
        let mut errors = Vec::new();
        for addr in missing {
            match open(addr, shared) {
                Ok(open) => {
                    gauge.fetch_add(1, Ordering::Relaxed);
                    self.open.insert(addr, open);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    pub fn close_all(&mut self, shared: &Shared) {
        let n = self.open.len() as i64;
        self.open.clear();
        shared
            .metrics
            .node
            .listeners
            .fetch_sub(n, Ordering::Relaxed);
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.open.values().map(|o| o.local).collect()
    }

    /// Every open listener's sockets, by the address each was asked for.
    pub fn handover(&self) -> Vec<(ListenKey, Vec<HandoverSocket>)> {
        self.open
            .iter()
            .map(|(addr, open)| (key(*addr), Accepting::handover(&open.accepting)))
            .collect()
    }
}

/// The address as the control socket's messages name it.
fn key(addr: ListenAddr) -> ListenKey {
    match addr {
        ListenAddr::Any(port) => ListenKey::AnyAddress(port),
        ListenAddr::One(a) => ListenKey::Addr(a),
    }
}

/// Open one listening address: one socket per shard, all on the same address with
/// `SO_REUSEPORT`, so the kernel spreads connections across the shards' runtimes; those the
/// previous process handed over for it first.
fn open(addr: ListenAddr, shared: &Arc<Shared>) -> Result<Open, ListenError> {
    let inherited = shared.inherited.take(Role::App, key(addr));
    let adopted = inherited.as_ref().map_or(0, Vec::len);
    match adopt_or_bind(inherited, shared.shards.len(), || bind(addr)) {
        Ok(listeners) => {
            let local = listeners
                .first()
                .and_then(|l| l.local_addr().ok())
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            let accepting = spawn_on_shards(listeners, shared, accept_loop);
            tracing::info!(%local, adopted, "listening");
            Ok(Open { local, accepting })
        }
        Err(source) => {
            let errors = &shared.metrics.node.listener_errors;
            errors.fetch_add(1, Ordering::Relaxed);
            let addr = match addr {
                ListenAddr::Any(port) => format!("*:{port}"),
                ListenAddr::One(a) => a.to_string(),
            };
            tracing::error!(%addr, error = %source, "cannot listen");
            Err(ListenError { addr, source })
        }
    }
}

/// Open a listener. The wildcard is dual-stack `[::]` where the host has IPv6, else `0.0.0.0`.
/// `SO_REUSEPORT` lets a new process take over the ports while this one drains (restarts
/// without refusing connections).
fn bind(addr: ListenAddr) -> io::Result<std::net::TcpListener> {
    match addr {
        ListenAddr::One(a) => bind_one(a, false),
        ListenAddr::Any(port) => {
            bind_one(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port), true)
                .or_else(|_| bind_one(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), false))
        }
    }
}

async fn accept_loop(listener: Arc<TcpListener>, stop: oneshot::Receiver<()>, shared: Arc<Shared>) {
    // A listener bound to one address accepts connections to that address only: their local
    // address is known without a getsockname each (HAProxy does not ask either). A wildcard
    // listener's connections are asked.
    let bound = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    accept_each(listener, stop, bound, shared).await
}

/// The accept loop of a listener whose connections were steered to it (`sk_lookup`): its own
/// address says nothing of theirs, so each is asked.
pub(super) async fn accept_loop_asking(
    listener: Arc<TcpListener>,
    stop: oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    accept_each(listener, stop, None, shared).await
}

async fn accept_each(
    listener: Arc<TcpListener>,
    mut stop: oneshot::Receiver<()>,
    bound: Option<SocketAddr>,
    shared: Arc<Shared>,
) {
    while let Some(accepted) = next(&listener, &mut stop, &shared).await {
        match accepted {
            Ok((stream, peer)) => admit(stream, peer, bound, &shared),
            Err(e) => accept_failed(&e, &shared).await,
        }
    }
}

/// Route and admit one accepted connection, then hand it to its own task. A rejected one is
/// closed at once: dropping the socket is the cheapest answer to a flood.
fn admit(stream: TcpStream, peer: SocketAddr, bound: Option<SocketAddr>, shared: &Arc<Shared>) {
    let Some(local) = bound.or_else(|| stream.local_addr().ok()) else {
        return;
    };
    let routes = shared.routes.load();
    let Some(route) = routes.port(local) else {
        tracing::debug!(%local, "no route for accepted connection");
        return;
    };
    let peer_ip = peer.ip().to_canonical();
    if let PortRoute::Tcp(r) = route {
        // The app's traffic policy, before any slot is taken: a refused client is closed here.
        if let Err(refusal) = crate::policy::check(&r.app, r.service(), &r.metrics, peer_ip) {
            r.metrics.error(refusal.code());
            tracing::debug!(app = %r.app.name, client = %peer_ip, %refusal, "connection refused");
            return;
        }
    }
    let Some(mut guards) = node_guards(route, &routes.limits, peer_ip, shared) else {
        return;
    };
    let peer = SocketAddr::new(peer_ip, peer.port());
    match route {
        PortRoute::Tcp(route) => {
            let app = &route.app;
            let budget = app.config.limits.max_connections;
            let Some(app_slot) = app.live.connections.try_acquire(budget) else {
                route.metrics.error(ErrorCode::AppLimit);
                return;
            };
            guards._app = Some(app_slot);
            let conn = tcp::Conn {
                client: stream,
                peer,
                local,
                route: route.clone(),
                connect_timeout: routes.limits.connect_timeout,
            };
            tokio::spawn(tcp::serve(conn, guards, shared.clone()));
        }
        PortRoute::Http(port) => {
            let client = crate::instance::headers::ClientInfo {
                peer,
                local,
                tls: port.tls,
            };
            crate::front::http::spawn(stream, client, guards, &routes, shared);
        }
    }
}

/// The node's own caps on client connections: `max_connections` on the node and
/// `max_connections_per_ip`; `None` (counted) when either is full.
fn node_guards(
    route: &PortRoute,
    limits: &anyedge_config::Limits,
    peer_ip: std::net::IpAddr,
    shared: &Shared,
) -> Option<tcp::Guards> {
    let app_metrics = match route {
        PortRoute::Tcp(r) => Some(&r.metrics),
        PortRoute::Http(_) => None,
    };
    let node = &shared.node_connections;
    let Some(node_slot) = node.try_acquire(clamp(limits.max_connections)) else {
        let rejected = &shared.metrics.node.rejected_node_limit;
        rejected.fetch_add(1, Ordering::Relaxed);
        reject(app_metrics, shared, ErrorCode::NodeLimit);
        return None;
    };
    let per_ip = clamp(limits.max_connections_per_ip);
    let Some(ip_slot) = shared.per_ip.try_acquire(peer_ip, per_ip) else {
        reject(app_metrics, shared, ErrorCode::IpLimit);
        return None;
    };
    Some(tcp::Guards {
        _node: node_slot,
        _ip: ip_slot,
        _app: None,
        _drain: shared.drain.track(),
    })
}

fn reject(app: Option<&Arc<anyedge_telemetry::AppMetrics>>, shared: &Shared, code: ErrorCode) {
    match app {
        Some(m) => m.error(code),
        None => shared.metrics.node.rejection(code),
    }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
