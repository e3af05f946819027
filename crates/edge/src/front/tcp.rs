//! The raw TCP path: place the connection on an instance (carrying it to another when a connect
//! fails), send a PROXY header if the port asks for one, then move bytes both ways.

mod connect;

use crate::instance::{proxy_protocol, relay};
use crate::routes::TcpRoute;
use crate::Shared;
use anyedge_admission::{BudgetGuard, KeyGuard};
use anyedge_core::ConnGuard;
use connect::{Stream, Upstream};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

/// Slots a connection holds until it ends.
pub(crate) struct Guards {
    pub _node: BudgetGuard,
    pub _ip: KeyGuard<IpAddr>,
    pub _app: Option<BudgetGuard>,
    pub _drain: ConnGuard,
}

pub(crate) struct Conn {
    pub client: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub route: Arc<TcpRoute>,
    pub connect_timeout: Duration,
}

pub(crate) async fn serve(conn: Conn, guards: Guards, shared: Arc<Shared>) {
    let span = tracing::info_span!("tcp", app = %conn.route.app.name, client = %conn.peer, port = conn.local.port());
    async move {
        let _guards = guards;
        let _active = conn.route.metrics.tcp_connect();
        // Boxed, and so freed once connected: connecting (resolving, retrying, a TLS handshake
        // to a worker) takes far more state than relaying, and an idle connection would
        // otherwise keep room for it as long as it lives.
        let connecting = connect::connect_any(&conn.route, conn.connect_timeout, &shared, conn.peer, conn.local.port());
        let upstream = match Box::pin(connecting).await {
            Ok(u) => u,
            Err(e) => {
                let code = e.code();
                conn.route.metrics.error(code);
                tracing::warn!(code = code.as_str(), reason = %e, "closing client connection: no instance can take it");
                return;
            }
        };
        let Upstream { stream, instance, _inflight } = upstream;
        tracing::debug!(instance = %instance, "connected");
        let mut stream = match stream {
            Stream::Local(s) => s,
            Stream::Backhaul(mut tunnel) => {
                // The worker sends the PROXY header, if the port asks for one.
                let open = &shared.metrics.backhaul.tcp_connections;
                open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut client = conn.client;
                let metrics = &conn.route.metrics;
                // Boxed: a connection to a local instance keeps no room for this relay's state.
                let activity = relay::Activity::new();
                let idle_timeout = conn.route.service().tcp_options.idle_timeout;
                // Built in place: a relay future held in a local would be kept twice.
                match Box::pin(relay::with_idle_timeout(relay::copy_pooled(&mut client, &mut *tunnel, &shared.bufs, &activity), &activity, idle_timeout)).await.unwrap_or_else(idle_closed) {
                    Ok((up, down)) => {
                        metrics.add_bytes(anyedge_telemetry::Direction::In, up);
                        metrics.add_bytes(anyedge_telemetry::Direction::Out, down);
                        tracing::debug!(instance = %instance, up, down, "closed");
                    }
                    Err(e) => tracing::debug!(instance = %instance, error = %e, "ended with error"),
                }
                open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        if let Some(version) = conn.route.proxy_proto {
            let header = proxy_protocol::encode(version, conn.peer, conn.local);
            if let Err(e) = stream.write_all(&header).await {
                tracing::info!(instance = %instance, error = %e, "instance closed before the PROXY header was sent");
                return;
            }
        }
        let metrics = conn.route.metrics.clone();
        let activity = relay::Activity::new();
        let idle_timeout = conn.route.service().tcp_options.idle_timeout;
        // Built in place: a relay future held in a local would be kept twice.
        match relay::with_idle_timeout(relay::bidirectional(&conn.client, &stream, (&shared.pipes, &shared.bufs), shared.mover, &metrics, &activity), &activity, idle_timeout).await.unwrap_or_else(idle_closed) {
            Ok(()) => tracing::debug!(instance = %instance, "closed"),
            Err(e) => tracing::debug!(instance = %instance, error = %e, "ended with error"),
        }
    }
    .instrument(span)
    .await
}

/// A relay cut for idleness ends like one that failed: both sockets are closed when dropped.
fn idle_closed<T>() -> std::io::Result<T> {
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "idle for tcp_options.idle_timeout",
    ))
}
