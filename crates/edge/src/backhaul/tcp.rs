//! Raw TCP over backhaul, the edge's side: a TLS connection of its own to the worker (ALPN
//! `anyedge-tcp`), opened with the versioned header naming the app, the instance, the client's
//! address and the edge port; the worker answers before any client byte moves. A refusal is a
//! failed connect: the edge places the connection on another instance.

use super::link::{attempt_error, connect_tls};
use crate::instance::connect::AttemptError;
use crate::Shared;
use anyedge_backhaul::header::{TcpHeader, TcpReply};
use anyedge_backhaul::rtt::RttSampled;
use anyedge_catalog::PeerEntry;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub(crate) type TcpBackhaul = tokio_rustls::client::TlsStream<RttSampled>;

/// Open a TCP backhaul connection to `peer` for one client connection.
pub(crate) async fn open(
    shared: &Shared,
    peer: &PeerEntry,
    header: &TcpHeader,
    timeout: Duration,
) -> Result<TcpBackhaul, AttemptError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = connect_tls(
        shared,
        &peer.id,
        &peer.advertise,
        anyedge_backhaul::ALPN_TCP,
        timeout,
        peer.live.rtt_us.clone(),
    )
    .await?;
    let bytes = header
        .encode()
        .map_err(|e| attempt_error(&peer.id, &format!("header: {e}")))?;
    let io = |e: std::io::Error| attempt_error(&peer.id, &e.to_string());
    let exchange = async {
        stream.write_all(&bytes).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        TcpReply::read_from(&mut stream)
            .await
            .map_err(|e| attempt_error(&peer.id, &format!("reply: {e}")))
    };
    // The worker connects to the instance before it answers: allow it the connect timeout.
    let reply = tokio::time::timeout_at(deadline + timeout, exchange)
        .await
        .map_err(|_| attempt_error(&peer.id, "no answer from the worker in time"))??;
    match reply {
        TcpReply::Connected => Ok(stream),
        TcpReply::Refused(why) => Err(AttemptError::Refused {
            peer: peer.id.to_string(),
            reason: why.into(),
        }),
    }
}

/// The header for one client connection.
pub(crate) fn header(app: &str, instance: &str, client: SocketAddr, edge_port: u16) -> TcpHeader {
    TcpHeader {
        app: app.to_string(),
        instance: instance.to_string(),
        client,
        edge_port,
    }
}
