//! One edge's HTTP/2 connections to one worker: up to [`CONNECTIONS`] long-lived connections
//! over mutual TLS (ALPN `anyedge-h2`), shared by every app and request, used in turn. A closed
//! connection (GOAWAY, reset, or a keep-alive ping unanswered for [`PING_TIMEOUT`]) is dropped
//! from the set and the next request opens a new one. The socket's kernel RTT (`TCP_INFO`) is
//! sampled into the peer's live state: placement's distance to the worker.
//!
//! Requests travel on [`streams::Conn`], the `h2` crate driven directly. A protocol switch
//! (extended CONNECT) travels on a connection of hyper's client, opened for the first one and
//! kept for the next ([`Link::upgrade_sender`]).

use super::feed;
use super::streams;
use crate::instance::connect::{self, AttemptError};
use crate::instance::pool::UpstreamError;
use crate::Shared;
use anyedge_backhaul::rtt::RttSampled;
use anyedge_catalog::PeerEntry;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::instance::body::ReqBody;

/// HTTP/2 connections kept per worker: enough that one slow connection (a full TCP window, a
/// lost segment) does not stall every request, few enough that streams share them.
pub(crate) const CONNECTIONS: usize = 2;
/// Keep-alive pings: a dead worker or path is noticed within interval + timeout.
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the socket's RTT is read.
const RTT_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Link {
    id: Arc<str>,
    advertise: String,
    rtt: Arc<AtomicU32>,
    conns: Mutex<Vec<streams::Conn>>,
    /// hyper's HTTP/2 client, for protocol switches.
    upgrades: tokio::sync::Mutex<Option<http2::SendRequest<ReqBody>>>,
    next: AtomicUsize,
    /// The first connection is opened by one request at a time; others wait and then use it.
    opening: tokio::sync::Mutex<()>,
    /// A further connection is being opened in the background.
    growing: AtomicBool,
    feed_started: AtomicBool,
    /// [`Link::follow_early`] is trying to open the first connection.
    early: AtomicBool,
}

impl Link {
    pub fn new(peer: &PeerEntry) -> Link {
        Link {
            id: peer.id.clone(),
            advertise: peer.advertise.clone(),
            rtt: peer.live.rtt_us.clone(),
            conns: Mutex::new(Vec::new()),
            upgrades: tokio::sync::Mutex::new(None),
            next: AtomicUsize::new(0),
            opening: tokio::sync::Mutex::new(()),
            growing: AtomicBool::new(false),
            feed_started: AtomicBool::new(false),
            early: AtomicBool::new(false),
        }
    }

    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// A live connection, the next in turn, and how many are open.
    fn pick(&self) -> (Option<streams::Conn>, usize) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|c| !c.is_closed());
        if conns.is_empty() {
            return (None, 0);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        (Some(conns[i].clone()), conns.len())
    }

    fn add(self: &Arc<Self>, conn: streams::Conn, shared: &Arc<Shared>) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        if !self.feed_started.swap(true, Ordering::AcqRel) {
            feed::follow(Arc::downgrade(self), shared.clone());
        }
    }

    /// A connection to send one request on: one of the open ones (while fewer than
    /// [`CONNECTIONS`] are open, another is opened beside the request, not in its way), or,
    /// with none open, a new one; requests arriving meanwhile wait for it.
    pub async fn sender(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        timeout: Duration,
    ) -> Result<streams::Conn, UpstreamError> {
        if let (Some(conn), open) = self.pick() {
            if open < CONNECTIONS {
                self.grow(shared, timeout);
            }
            return Ok(conn);
        }
        // Boxed: opening is the exception (see `UpstreamPool::fresh`).
        Box::pin(self.first(shared, timeout)).await
    }

    /// The first connection, opened on a request's path: no other is open.
    async fn first(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        timeout: Duration,
    ) -> Result<streams::Conn, UpstreamError> {
        let _one = self.opening.lock().await;
        if let (Some(conn), _) = self.pick() {
            return Ok(conn);
        }
        match self.open(shared, timeout).await {
            Ok(conn) => {
                self.add(conn.clone(), shared);
                Ok(conn)
            }
            Err(e) => {
                // No connection at all: the last RTT measured says nothing of the worker now.
                self.rtt.store(0, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Open one more connection in the background, unless one is being opened already.
    fn grow(self: &Arc<Self>, shared: &Arc<Shared>, timeout: Duration) {
        if self.growing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (link, shared) = (self.clone(), shared.clone());
        tokio::spawn(async move {
            match link.open(&shared, timeout).await {
                Ok(conn) => link.add(conn, &shared),
                Err(e) => {
                    tracing::debug!(peer = %link.id, error = %e, "another backhaul connection not opened")
                }
            }
            link.growing.store(false, Ordering::Release);
        });
    }

    /// Open the first connection now, not at the first request, so that the worker's load feed
    /// (which starts with it) tells this edge the power state of the worker's instances with a
    /// driver before a request needs one (`super::start`). Retried with backoff (200 ms to
    /// 5 s) until it opens or the node stops; one attempt at a time per worker.
    pub fn follow_early(self: &Arc<Self>, shared: &Arc<Shared>) {
        if self.feed_started.load(Ordering::Acquire) || self.early.swap(true, Ordering::AcqRel) {
            return;
        }
        let (link, weak) = (Arc::downgrade(self), Arc::downgrade(shared));
        let drain = shared.drain.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let (Some(l), Some(shared)) = (link.upgrade(), weak.upgrade()) else {
                    return;
                };
                if l.feed_started.load(Ordering::Acquire) {
                    return;
                }
                let timeout = shared.routes.load().limits.connect_timeout;
                if let Err(e) = l.sender(&shared, timeout).await {
                    tracing::debug!(peer = %l.id, error = %e, "backhaul not opened early");
                }
                drop((l, shared));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = drain.started() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// A connection of hyper's HTTP/2 client for a protocol switch: the one opened for an earlier
    /// switch while it lasts, else a new one. It counts among the worker's backhaul connections.
    pub async fn upgrade_sender(
        &self,
        shared: &Shared,
        timeout: Duration,
    ) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        let mut kept = self.upgrades.lock().await;
        if let Some(sender) = kept.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let stream = self.connect(shared, timeout).await?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // Fixed windows, as on the request connections (`streams`): with adaptive ones a
            // connection's window is a stream's, and one stalled tunnel would stall the others.
            .initial_stream_window_size(streams::STREAM_WINDOW)
            .initial_connection_window_size(streams::CONNECTION_WINDOW)
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true);
        let (sender, conn) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        let end = self.opened(shared);
        tokio::spawn(async move { end(conn.await.map_err(|e| e.to_string())) });
        *kept = Some(sender.clone());
        Ok(sender)
    }

    async fn open(
        &self,
        shared: &Shared,
        timeout: Duration,
    ) -> Result<streams::Conn, UpstreamError> {
        let stream = self.connect(shared, timeout).await?;
        let end = self.opened(shared);
        streams::Conn::handshake(stream, PING_INTERVAL, PING_TIMEOUT, end)
            .await
            .map_err(|e| attempt_error(&self.id, &format!("HTTP/2 handshake: {e}")).into())
    }

    async fn connect(
        &self,
        shared: &Shared,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<RttSampled>, UpstreamError> {
        let alpn = anyedge_backhaul::ALPN_H2;
        let rtt = self.rtt.clone();
        Ok(connect_tls(shared, &self.id, &self.advertise, alpn, timeout, rtt).await?)
    }

    /// Count a connection opened; what to run when it ends (count it closed, log why).
    fn opened(&self, shared: &Shared) -> impl FnOnce(Result<(), String>) + Send + 'static {
        let metrics = shared.metrics.clone();
        let backhaul = &metrics.backhaul;
        backhaul.h2_connections.fetch_add(1, Ordering::Relaxed);
        backhaul.connections_opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %self.id, address = %self.advertise, "backhaul connection open");
        let peer = self.id.clone();
        move |result| {
            match result {
                Ok(()) => tracing::debug!(peer = %peer, "backhaul connection closed"),
                Err(e) => tracing::info!(peer = %peer, error = %e, "backhaul connection lost"),
            }
            metrics
                .backhaul
                .h2_connections
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub(crate) fn attempt_error(peer: &str, why: &str) -> AttemptError {
    AttemptError::Backhaul {
        peer: peer.to_string(),
        why: why.to_string(),
    }
}

/// A TCP connection to the worker `peer` at `advertise`, with mutual TLS on top, checked to be
/// that worker (its certificate names `peer`) and to speak `alpn`.
pub(crate) async fn connect_tls(
    shared: &Shared,
    peer: &str,
    advertise: &str,
    alpn: &[u8],
    timeout: Duration,
    rtt: Arc<AtomicU32>,
) -> Result<tokio_rustls::client::TlsStream<RttSampled>, AttemptError> {
    let tls = shared
        .backhaul
        .tls
        .load_full()
        .ok_or_else(|| attempt_error(peer, "no [cluster] certificates"))?;
    let (host, port) = super::split_advertise(advertise)
        .ok_or_else(|| attempt_error(peer, "advertise has no port"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = connect::connect_one(&host, port, timeout, &shared.resolver).await?;
    let _ = tcp.set_nodelay(true);
    crate::sockets::keep_alive(&tcp);
    let io = RttSampled::new(tcp, rtt, RTT_EVERY);
    let name = rustls::pki_types::ServerName::try_from(peer.to_string())
        .map_err(|_| attempt_error(peer, "node id is not a DNS name"))?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config(alpn));
    let stream = match tokio::time::timeout_at(deadline, connector.connect(name, io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(attempt_error(peer, &format!("TLS: {e}"))),
        Err(_) => return Err(attempt_error(peer, "TLS handshake timed out")),
    };
    if stream.get_ref().1.alpn_protocol() != Some(alpn) {
        return Err(attempt_error(
            peer,
            "the worker did not agree on the backhaul protocol",
        ));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests;
