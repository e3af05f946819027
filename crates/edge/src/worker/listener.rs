//! The worker's backhaul listener (`[node] backhaul_listen`). Only nodes presenting a
//! certificate from the cluster CA get past the TLS handshake (mutual TLS; anything else is
//! refused and counted as `anyedge_backhaul_refused_total{reason="tls"}`). ALPN tells the two
//! kinds apart: `anyedge-h2` carries HTTP streams ([`super::http`], on our HTTP/2 server), `anyedge-tcp` one raw TCP
//! connection opened by a TCP header ([`super::tcp`]).

use super::http::WorkerService;
use crate::{h2server, Shared};
use anyedge_backhaul::{ALPN_H2, ALPN_TCP};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Bound on an edge's TLS handshake and its TCP header.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one edge may have open on one backhaul connection.
const MAX_STREAMS: u32 = 8192;

pub(super) type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// The running backhaul listener: one socket per shard on the same address (`SO_REUSEPORT`),
/// each accepting on its shard's runtime, so backhaul is served by every core like the apps'
/// ports are.
pub(crate) struct BackhaulListener {
    pub addr: SocketAddr,
    pub bound: SocketAddr,
    /// The sockets, shared with their accept loops (copied only to hand them over).
    pub accepting: Vec<crate::sockets::Accepting>,
}

/// Listen on `addr` for edges, on the sockets the previous process handed over for it if any.
pub(crate) fn start(addr: SocketAddr, shared: &Arc<Shared>) -> std::io::Result<BackhaulListener> {
    use anyedge_core::control::{ListenKey, Role};
    let inherited = shared.inherited.take(Role::Backhaul, ListenKey::Addr(addr));
    let adopted = inherited.as_ref().map_or(0, Vec::len);
    let mut sockets = match inherited {
        Some(fds) => fds
            .into_iter()
            .map(crate::sockets::adopt)
            .collect::<std::io::Result<Vec<_>>>()?,
        None => vec![crate::sockets::bind_one(addr, false)?],
    };
    let bound = sockets
        .first()
        .map(std::net::TcpListener::local_addr)
        .transpose()?
        .unwrap_or(addr);
    while sockets.len() < shared.shards.len() {
        // Port 0 was resolved by the first bind: the others join it.
        sockets.push(crate::sockets::bind_one(bound, false)?);
    }
    let accepting = crate::sockets::spawn_on_shards(sockets, shared, accept_loop);
    tracing::info!(%bound, adopted, "backhaul listening");
    Ok(BackhaulListener {
        addr,
        bound,
        accepting,
    })
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    mut stop: oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    use crate::sockets::{accept_failed, next};
    while let Some(accepted) = next(&listener, &mut stop, &shared).await {
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let drain = shared.drain.track();
                tokio::spawn(async move {
                    let _drain = drain;
                    serve(stream, peer, shared).await;
                });
            }
            Err(e) => accept_failed(&e, &shared).await,
        }
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let metrics = &shared.metrics.backhaul;
    let Some(tls) = shared.backhaul.tls.load_full() else {
        metrics.refused("tls");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics.refused("tls");
            tracing::warn!(%peer, error = %e, "backhaul refused: mutual TLS failed");
            return;
        }
        Err(_) => {
            metrics.refused("tls");
            tracing::info!(%peer, "backhaul refused: TLS handshake timed out");
            return;
        }
    };
    metrics.accepted.fetch_add(1, Ordering::Relaxed);
    let conn = stream.get_ref().1;
    let edge: Arc<str> = anyedge_backhaul::tls::peer_node_id(conn)
        .unwrap_or_else(|| peer.to_string())
        .into();
    match conn.alpn_protocol() {
        Some(p) if p == ALPN_H2 => serve_h2(stream, edge, shared).await,
        Some(p) if p == ALPN_TCP => super::tcp::serve_tcp(stream, edge, shared).await,
        _ => {
            metrics.refused("alpn");
            tracing::info!(%peer, "backhaul refused: no known protocol (ALPN)");
        }
    }
}

/// Serve an edge's backhaul streams with our HTTP/2 server (`crate::h2server`) until the
/// connection ends; on drain, no new streams (GOAWAY) and the ones in flight finish.
pub(super) async fn serve_h2<IO>(io: IO, edge: Arc<str>, shared: Arc<Shared>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let service = WorkerService {
        shared: shared.clone(),
        edge: edge.clone(),
    };
    let answer = |req| service.answer(req);
    if let Err(e) = h2server::serve(io, &SETTINGS, shared.drain.started(), answer).await {
        tracing::debug!(edge = %edge, error = %e, "backhaul connection ended");
    }
}

/// The backhaul server's protections, as they were on hyper's server. Fixed windows, as the
/// edge's (`anyedge_backhaul::STREAM_WINDOW`): request body data an instance has not read yet
/// counts against the connection's window, so it is sixteen streams' worth, and a few stalled
/// uploads do not stall every other request body on the connection. A PING every 5 s, answered
/// within 5 s. No idle timeout: an edge keeps its backhaul connections open while it needs them.
const SETTINGS: h2server::Settings = h2server::Settings {
    max_concurrent_streams: MAX_STREAMS,
    max_header_list_size: 16 * 1024,
    max_pending_accept_reset_streams: 1024,
    max_local_error_reset_streams: h2server::DEFAULT_LOCAL_ERROR_RESETS,
    stream_window: anyedge_backhaul::STREAM_WINDOW,
    connection_window: anyedge_backhaul::CONNECTION_WINDOW,
    max_send_buffer: h2server::DEFAULT_SEND_BUFFER,
    ping_interval: Duration::from_secs(5),
    ping_timeout: Duration::from_secs(5),
    idle: None,
};
