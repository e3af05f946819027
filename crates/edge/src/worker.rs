//! The worker role: the backhaul listener (`[node] backhaul_listen`). Only nodes presenting a
//! certificate from the cluster CA get past the TLS handshake (mutual TLS; anything else is
//! refused and counted as `anyedge_backhaul_refused_total{reason="tls"}`). ALPN tells the two
//! kinds apart: `anyedge-h2` carries HTTP streams (`crate::http::worker`), `anyedge-tcp` one raw
//! TCP connection opened by a [`TcpHeader`].

use crate::http::worker::WorkerService;
use crate::Shared;
use anyedge_admission::BudgetGuard;
use anyedge_backhaul::header::{RefuseReason, TcpHeader, TcpReply};
use anyedge_backhaul::{ALPN_H2, ALPN_TCP};
use anyedge_catalog::{AppEntry, Slot, Snapshot};
use anyedge_telemetry::Direction;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Bound on an edge's TLS handshake and its TCP header.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one edge may have open on one backhaul connection.
const MAX_STREAMS: u32 = 8192;

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// The running backhaul listener: one socket per shard on the same address (`SO_REUSEPORT`),
/// each accepting on its shard's runtime, so backhaul is served by every core like the apps'
/// ports are.
pub(crate) struct BackhaulListener {
    pub addr: SocketAddr,
    pub bound: SocketAddr,
    _stop: Vec<oneshot::Sender<()>>,
}

/// Listen on `addr` for edges.
pub(crate) fn start(addr: SocketAddr, shared: &Arc<Shared>) -> std::io::Result<BackhaulListener> {
    let first = crate::listeners::bind_one(addr, false)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..shared.shards.len() {
        // Port 0 was resolved by the first bind: the others join it.
        sockets.push(crate::listeners::bind_one(bound, false)?);
    }
    let stops = crate::listeners::spawn_on_shards(sockets, shared, accept_loop);
    tracing::info!(%bound, "backhaul listening");
    Ok(BackhaulListener {
        addr,
        bound,
        _stop: stops,
    })
}

async fn accept_loop(listener: TcpListener, mut stop: oneshot::Receiver<()>, shared: Arc<Shared>) {
    use crate::listeners::{accept_failed, next};
    while let Some(accepted) = next(&listener, &mut stop, &shared).await {
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
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
        Some(p) if p == ALPN_TCP => serve_tcp(stream, edge, shared).await,
        _ => {
            metrics.refused("alpn");
            tracing::info!(%peer, "backhaul refused: no known protocol (ALPN)");
        }
    }
}

async fn serve_h2(stream: ServerTls, edge: Arc<str>, shared: Arc<Shared>) {
    let service = WorkerService {
        shared: shared.clone(),
        edge: edge.clone(),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        // Fixed windows, as the edge's (`backhaul::streams`): request body data an instance has
        // not read yet counts against the connection's window, so it is sixteen streams' worth,
        // and a few stalled uploads do not stall every other request body on the connection.
        .initial_stream_window_size(crate::backhaul::streams::STREAM_WINDOW)
        .initial_connection_window_size(crate::backhaul::streams::CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .keep_alive_timeout(Duration::from_secs(5));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shared.drain.started() => {
            // Stopping: no new streams (GOAWAY); the ones in flight finish.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(edge = %edge, error = %e, "backhaul connection ended");
    }
}

/// One raw TCP connection for an edge: read and check the header, take the slots, connect,
/// answer, then move bytes both ways until either side closes.
async fn serve_tcp(mut stream: ServerTls, edge: Arc<str>, shared: Arc<Shared>) {
    let metrics = &shared.metrics.backhaul;
    let header =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpHeader::read_from(&mut stream)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::info!(edge = %edge, error = %e, "TCP backhaul refused: bad header");
                reply(
                    &mut stream,
                    TcpReply::Refused(RefuseReason::BadHeader),
                    &shared,
                )
                .await;
                return;
            }
            Err(_) => {
                metrics.refused(RefuseReason::BadHeader.as_str());
                return;
            }
        };
    let opened = match open(&header, &shared).await {
        Ok(o) => o,
        Err(why) => {
            tracing::info!(edge = %edge, app = %header.app, instance = %header.instance, reason = why.as_str(), "TCP backhaul refused");
            reply(&mut stream, TcpReply::Refused(why), &shared).await;
            return;
        }
    };
    metrics.streams.fetch_add(1, Ordering::Relaxed);
    let Opened {
        mut instance,
        _slots,
        app_metrics,
    } = opened;
    if let Err(e) = stream.write_all(&TcpReply::Connected.encode()).await {
        tracing::debug!(edge = %edge, error = %e, "edge left before the answer");
        return;
    }
    match crate::backhaul::tcp::relay(&mut stream, &mut instance, &shared.bufs).await {
        Ok((up, down)) => {
            app_metrics.add_bytes(Direction::In, up);
            app_metrics.add_bytes(Direction::Out, down);
        }
        Err(e) => tracing::debug!(edge = %edge, error = %e, "TCP backhaul ended with an error"),
    }
}

async fn reply(stream: &mut ServerTls, r: TcpReply, shared: &Shared) {
    if let TcpReply::Refused(why) = r {
        shared.metrics.backhaul.refused(why.as_str());
    }
    let _ = stream.write_all(&r.encode()).await;
    let _ = stream.shutdown().await;
}

struct Opened {
    instance: TcpStream,
    _slots: (BudgetGuard, Slot),
    app_metrics: Arc<anyedge_telemetry::AppMetrics>,
}

/// The index of one of this node's own instances of `app` named `instance`, or why a worker
/// refuses it: an instance of another app here is `WrongApp` (never carried across apps).
pub(crate) fn own_instance<'a>(
    snapshot: Option<&Snapshot>,
    app: Option<&'a AppEntry>,
    instance: &str,
) -> Result<(&'a AppEntry, usize), RefuseReason> {
    let own = |a: &AppEntry| {
        a.instance_index(instance)
            .filter(|&i| a.instances[i].peer.is_none())
    };
    if let Some(found) = app.and_then(|a| own(a).map(|i| (a, i))) {
        return Ok(found);
    }
    let elsewhere = snapshot.is_some_and(|s| s.apps.values().any(|a| own(a).is_some()));
    Err(if elsewhere {
        RefuseReason::WrongApp
    } else {
        RefuseReason::UnknownInstance
    })
}

/// The worker's own admission, the same for an HTTP stream and a TCP connection: not
/// draining, the instance healthy, a slot in the app's budget on this node and one under the
/// instance's hard limit.
pub(crate) fn admit(
    shared: &Shared,
    app: &AppEntry,
    index: usize,
) -> Result<(Slot, Slot), RefuseReason> {
    takes_work(shared, app, index)?;
    let app_slot = app
        .live
        .try_admit(app.config.limits.max_inflight)
        .ok_or(RefuseReason::AppOverloaded)?;
    let slot = inst_slot(app, index)?;
    Ok((app_slot, slot))
}

/// [`admit`] for a raw TCP connection: it takes a slot of the app's connection budget on this
/// node (`limits.max_connections`, as a client connection to one of this node's own ports
/// does), not of its HTTP request budget (`limits.max_inflight`).
fn admit_tcp(
    shared: &Shared,
    app: &AppEntry,
    index: usize,
) -> Result<(BudgetGuard, Slot), RefuseReason> {
    takes_work(shared, app, index)?;
    let app_slot = app
        .live
        .connections
        .try_acquire(app.config.limits.max_connections)
        .ok_or(RefuseReason::AppOverloaded)?;
    let slot = inst_slot(app, index)?;
    Ok((app_slot, slot))
}

/// Whether this node takes new work for the instance: not draining, the instance healthy.
fn takes_work(shared: &Shared, app: &AppEntry, index: usize) -> Result<(), RefuseReason> {
    if shared.drain.is_draining() {
        return Err(RefuseReason::Draining);
    }
    if !app.instances[index].live.healthy(Instant::now()) {
        return Err(RefuseReason::Unhealthy);
    }
    Ok(())
}

/// A slot of the instance's own (`concurrency.hard_limit`).
fn inst_slot(app: &AppEntry, index: usize) -> Result<Slot, RefuseReason> {
    app.instances[index]
        .live
        .try_take(app.config.concurrency.hard_limit, &app.live)
        .ok_or(RefuseReason::Full)
}

async fn open(h: &TcpHeader, shared: &Shared) -> Result<Opened, RefuseReason> {
    let routes = shared.routes.load_full();
    let snapshot = routes.snapshot.as_deref();
    let app = snapshot.and_then(|s| s.app(&h.app));
    let (app, index) = own_instance(snapshot, app.map(|a| &**a), &h.instance)?;
    // The app's raw TCP service on the port the client connected to at the edge.
    let (service, proxy_proto) = app
        .config
        .services
        .iter()
        .find_map(|s| {
            s.ports
                .iter()
                .find(|p| p.port == h.edge_port && p.is_raw_tcp())
                .map(|p| (s, p.proxy_proto))
        })
        .ok_or(RefuseReason::NoService)?;
    let slots = admit_tcp(shared, app, index)?;
    let inst = &app.instances[index];
    let port = inst
        .address
        .port
        .or(service.internal_port)
        .ok_or(RefuseReason::NoService)?;
    let timeout = routes.limits.connect_timeout;
    let mut instance = match crate::connect::connect_one(
        &inst.address.host,
        port,
        timeout,
        &shared.resolver,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            inst.live.connect_failed(Instant::now());
            tracing::info!(instance = %inst.id, error = %e, "instance unreachable");
            return Err(RefuseReason::ConnectFailed);
        }
    };
    inst.live.connect_succeeded();
    if let Some(version) = proxy_proto {
        // The client as the edge saw it; the destination is the edge's port.
        let local_ip = instance
            .local_addr()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
        let dst = SocketAddr::new(local_ip, h.edge_port);
        let header = crate::proxy_protocol::encode(version, h.client, dst);
        if instance.write_all(&header).await.is_err() {
            return Err(RefuseReason::ConnectFailed);
        }
    }
    let app_metrics = shared.metrics.app(&app.name);
    Ok(Opened {
        instance,
        _slots: slots,
        app_metrics,
    })
}
