//! The worker's raw TCP over backhaul: an edge opens a TLS connection of its own (ALPN
//! `anyedge-tcp`) with a [`TcpHeader`] naming the app, the instance, the client and the edge
//! port; the worker checks and admits it, connects to the instance (with a PROXY header when the
//! service asks for one), answers, and moves bytes both ways.

use super::admit::{admit_tcp, own_instance};
use super::listener::{ServerTls, HANDSHAKE_TIMEOUT};
use crate::instance::relay;
use crate::Shared;
use anyedge_admission::BudgetGuard;
use anyedge_backhaul::header::{RefuseReason, TcpHeader, TcpReply};
use anyedge_catalog::Slot;
use anyedge_telemetry::Direction;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One raw TCP connection for an edge: read and check the header, take the slots, connect,
/// answer, then move bytes both ways until either side closes.
pub(super) async fn serve_tcp(mut stream: ServerTls, edge: Arc<str>, shared: Arc<Shared>) {
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
        idle_timeout,
    } = opened;
    if let Err(e) = stream.write_all(&TcpReply::Connected.encode()).await {
        tracing::debug!(edge = %edge, error = %e, "edge left before the answer");
        return;
    }
    let activity = relay::Activity::new();
    let relayed = relay::with_idle_timeout(
        relay::copy_pooled(&mut stream, &mut instance, &shared.bufs, &activity),
        &activity,
        idle_timeout,
    )
    .await;
    match relayed.unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into())) {
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
    /// The service's `tcp_options.idle_timeout`.
    idle_timeout: std::time::Duration,
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
    let mut instance = match crate::instance::connect::connect_one(
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
        let header = crate::instance::proxy_protocol::encode(version, h.client, dst);
        if instance.write_all(&header).await.is_err() {
            return Err(RefuseReason::ConnectFailed);
        }
    }
    let app_metrics = shared.metrics.app(&app.name);
    Ok(Opened {
        instance,
        _slots: slots,
        app_metrics,
        idle_timeout: service.tcp_options.idle_timeout,
    })
}
