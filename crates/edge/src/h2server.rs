//! Our HTTP/2 server, on the `h2` crate itself: for clients (the front: h2c with prior knowledge
//! and ALPN `h2` over TLS) and for edges (the worker's backhaul streams).
//!
//! hyper's HTTP/2 server put a service dispatch, a spawned task, and hyper's body and upgrade
//! machinery around every stream. Here the connection's own task accepts each stream, builds the
//! request the forwarding core takes (its body reads the stream and gives window back as it is
//! taken), and drives every stream's future itself, beside the connection: the request's future
//! until its response head, then the response body onto the stream within its window
//! ([`stream::Respond`]). No task, channel or box per stream; a woken stream is polled by the
//! connection's task, which is the one that moves its frames anyway.
//!
//! Protections (the settings are in [`Settings`]): concurrent streams, the header list size,
//! streams a client resets before they are accepted and streams we reset for its errors (the
//! rapid-reset attacks: over either cap the client gets GOAWAY), keep-alive pings (an unanswered
//! one drops the connection), and idleness by streams ([`idle`]): a connection with no stream
//! for its timeout, or a node that drains, gets a graceful GOAWAY; streams in flight finish.
//! Extended CONNECT (RFC 8441) opens a tunnel ([`tunnel`]) handed to the forwarding core once
//! its 200 is sent.

pub(crate) mod idle;
mod stream;
mod tunnel;

use crate::instance::body::{BoxError, ClientBody};
use crate::instance::h2body::RecvBody;
use crate::instance::upgrade::Handover;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, Stream as _};
use h2::Ping;
use http::{Method, Request, Response};
use http_body::Body;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// One server's HTTP/2 settings and protections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Streams a peer may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Bound on a request's header block, decoded (SETTINGS_MAX_HEADER_LIST_SIZE); over it, `h2`
    /// answers 431 itself.
    pub max_header_list_size: u32,
    /// Streams the peer opened and reset before we accepted them (CVE-2023-44487, rapid
    /// reset): over this, GOAWAY(ENHANCE_YOUR_CALM).
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset for the peer's errors (CVE-2024-27316-like floods): over this, GOAWAY.
    pub max_local_error_reset_streams: usize,
    /// Receive windows: what a peer may send ahead on one stream, and on the connection.
    pub stream_window: u32,
    pub connection_window: u32,
    /// Response data queued on the connection for one stream before its sender waits.
    pub max_send_buffer: usize,
    /// A PING every `ping_interval`; one unanswered for `ping_timeout` drops the connection.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Idleness by streams: before the first stream (counted from the connection's start, its
    /// handshake included), and after the last one; `None` for none.
    pub idle: Option<(Duration, Duration)>,
}

/// hyper's defaults, which the front and the worker kept: 1 MiB windows, 400 KiB send buffer.
pub(crate) const DEFAULT_WINDOW: u32 = 1024 * 1024;
pub(crate) const DEFAULT_SEND_BUFFER: usize = 400 * 1024;
/// The bound on streams we reset for a peer's errors (hyper's and `h2`'s default).
pub(crate) const DEFAULT_LOCAL_ERROR_RESETS: usize = 1024;

/// How a connection ended, when not cleanly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Ended {
    #[error("{0}")]
    H2(#[from] h2::Error),
    #[error("no HTTP/2 handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("keep-alive ping unanswered for {0:?}")]
    PingTimeout(Duration),
    #[error("still open {0:?} after GOAWAY with no stream; dropped")]
    CloseTimeout(Duration),
}

impl Ended {
    /// Whether the peer broke the protocol (`h2` answered with GOAWAY: a malformed frame, a
    /// flood of resets, a header block it could not decode): the client's fault, to be counted
    /// as such, never an instance's.
    pub fn is_peer_protocol_error(&self) -> bool {
        match self {
            Ended::H2(e) => {
                e.is_go_away() && !e.is_remote() && e.reason() != Some(h2::Reason::NO_ERROR)
            }
            _ => false,
        }
    }
}

/// Serve HTTP/2 on `io` until the connection ends: `answer` is called with each stream's request
/// as its head arrives, and its future's response is sent on the stream. When `drain` resolves
/// (the node stops, or hands its listeners over), the connection closes gracefully.
pub(crate) async fn serve<IO, F, Fut, B>(
    io: IO,
    settings: &Settings,
    drain: impl Future<Output = ()>,
    mut answer: F,
) -> Result<(), Ended>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<ClientBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(settings.max_local_error_reset_streams))
        .max_send_buffer_size(settings.max_send_buffer)
        .enable_connect_protocol();
    let handshake = builder.handshake::<_, Bytes>(io);
    // The connection's idleness counts from its start: the handshake is within the first
    // stream's time.
    let streams = idle::Streams::default();
    let idle = idle_for(streams.clone(), settings.idle);
    tokio::pin!(idle);
    let mut conn = tokio::select! {
        conn = handshake => conn?,
        () = idle.as_mut() => {
            let first = settings.idle.map_or(Duration::ZERO, |(first, _)| first);
            return Err(Ended::HandshakeTimeout(first));
        }
    };
    let mut running = FuturesUnordered::new();
    let mut pings = conn.ping_pong();
    let mut awaiting_pong = false;
    let (interval, ping_timeout) = (settings.ping_interval, settings.ping_timeout);
    // One timer, moved rather than made anew: this task wakes for every frame.
    let timer = tokio::time::sleep(interval);
    tokio::pin!(timer, drain);
    let mut closing = false;
    #[allow(clippy::large_enum_variant)] // returned once per wake-up, never kept
    enum Event {
        Stream(Request<h2::RecvStream>, h2::server::SendResponse<Bytes>),
        Ended(Result<(), h2::Error>),
        Pong(Result<h2::Pong, h2::Error>),
        Timer,
        Close,
        Idle,
    }
    loop {
        let event = poll_fn(|cx| {
            // The streams first: what they sent goes out with this turn's frames.
            while let Poll::Ready(Some(())) = Pin::new(&mut running).poll_next(cx) {}
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    return Poll::Ready(Event::Stream(req, respond))
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Event::Ended(Err(e))),
                Poll::Ready(None) => return Poll::Ready(Event::Ended(Ok(()))),
                Poll::Pending => {}
            }
            if awaiting_pong {
                if let Some(Poll::Ready(r)) = pings.as_mut().map(|p| p.poll_pong(cx)) {
                    return Poll::Ready(Event::Pong(r));
                }
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            if !closing && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Close);
            }
            idle.as_mut().poll(cx).map(|()| Event::Idle)
        })
        .await;
        let now = tokio::time::Instant::now;
        match event {
            Event::Stream(req, respond) => {
                let (req, tunnel) = request(req);
                let guard = streams.begin();
                // Boxed once where it is made: the core's future is kilobytes, and the set moves
                // what it is given three times on its way into its node (callgrind: 1,100
                // instructions of memcpy per request, unboxed). (Built in place in its box instead,
                // callgrind counted no difference: 48,242 against 48,071.)
                let answering = Box::pin(answer(req));
                running.push(stream::Respond::new(answering, respond, tunnel, guard));
            }
            Event::Ended(r) => return r.map_err(Ended::from),
            Event::Pong(Err(e)) => return Err(e.into()),
            Event::Pong(Ok(_)) => {
                awaiting_pong = false;
                timer.as_mut().reset(now() + interval);
            }
            Event::Timer if awaiting_pong => return Err(Ended::PingTimeout(ping_timeout)),
            Event::Timer => match pings.as_mut().map(|p| p.send_ping(Ping::opaque())) {
                Some(Ok(())) => {
                    awaiting_pong = true;
                    timer.as_mut().reset(now() + ping_timeout);
                }
                Some(Err(e)) => return Err(e.into()),
                None => timer.as_mut().reset(now() + interval),
            },
            Event::Close | Event::Idle if !closing => {
                // No new streams (GOAWAY); those in flight finish. The graceful close waits
                // for the client to answer a PING after the first GOAWAY: a client that never
                // does would hold the connection, so once it has no stream for another header
                // timeout, it is dropped.
                closing = true;
                conn.graceful_shutdown();
                let first = settings.idle.map(|(first, _)| (first, first));
                idle.set(idle_for(streams.clone(), first));
            }
            Event::Close => {}
            Event::Idle => {
                let waited = settings.idle.map_or(Duration::ZERO, |(first, _)| first);
                return Err(Ended::CloseTimeout(waited));
            }
        }
    }
}

/// Resolves once the connection's streams have been idle for `limits` (never without).
async fn idle_for(streams: idle::Streams, limits: Option<(Duration, Duration)>) {
    match limits {
        Some((first, then)) => streams.idle(first, then).await,
        None => std::future::pending().await,
    }
}

/// The request as the forwarding core takes it, and for an extended CONNECT, the stream's
/// receiving side, kept for the tunnel, with the handle that hands the tunnel over.
fn request(req: Request<h2::RecvStream>) -> (Request<ClientBody>, Option<stream::Connect>) {
    let (mut parts, recv) = req.into_parts();
    if parts.method == Method::CONNECT {
        let (handover, to) = Handover::new();
        parts.extensions.insert(handover);
        let connect = stream::Connect { recv, to };
        return (Request::from_parts(parts, ClientBody::Empty), Some(connect));
    }
    let body = if recv.is_end_stream() {
        ClientBody::Empty
    } else {
        ClientBody::H2(RecvBody::new(recv, None))
    };
    (Request::from_parts(parts, body), None)
}

#[cfg(test)]
mod tests;
