//! Our HTTP/1.1 server for clients: one task per connection that owns its socket, reads heads
//! with `anyedge-http1`, hands each request to the forwarding core (`http/service.rs`) and
//! writes the answer itself. Requests are answered in order (pipelined ones from the same
//! buffer). Between requests the connection holds no buffer: an idle keep-alive connection is
//! its socket, a timer and a few words. hyper's server is not on this path.
//!
//! Timeouts: the first request's head must arrive within `header_read_timeout` of the
//! accept; between requests the connection may stay quiet for `idle_timeout`, and a head
//! must then be complete within `header_read_timeout` of its first byte. A request being
//! answered has no idle timeout (its own timeouts apply). On drain (a stop, or an upgrade
//! handing the listeners to a new process), a connection closes after answering its next
//! request with `Connection: close`, or when its idle timeout runs out as it would without
//! the drain: closing an idle connection at any earlier moment races a client sending its
//! next request (`docs/operations.md`).

mod head;
mod pump;
mod respond;
mod rewind;

pub(crate) use crate::instance::buffers::{self, ReadBuffer};
pub(crate) use rewind::Rewind;

use super::http::ProxyService;
use crate::instance::body::ClientBody;
use crate::instance::inbound;
use crate::instance::upgrade::{Handover, Switched};
use crate::{in_pool, Shared};
use anyedge_http1::Limits;
use anyedge_telemetry::ErrorCode;
use head::Rejection;
use pump::{Progress, Pump};
use respond::{Shape, Writer};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A client connection our server can run on.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether readiness can be awaited without a buffer (a plain socket can; TLS keeps
    /// decrypted bytes of its own, so a TLS connection waits by reading).
    const WAITS_WITHOUT_BUFFER: bool;

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientIo for TcpStream {
    const WAITS_WITHOUT_BUFFER: bool = true;

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    const WAITS_WITHOUT_BUFFER: bool = false;

    fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How an exchange leaves the connection.
enum Next {
    KeepAlive,
    Close,
    /// Close, but read what the client still sends for a while first, so that our answer is
    /// not destroyed by a reset (the client's unread bytes would make the kernel send one).
    Linger,
    /// Hand the connection to the protocol switch the answer agreed to.
    Switch(oneshot::Sender<Switched>),
}

/// A client connection and its read buffer (bytes already read from it).
pub(crate) struct Conn<IO> {
    pub(crate) io: IO,
    pub(crate) buf: ReadBuffer,
}

/// How a connection ends, once it is not kept alive: [`Conn::close`].
pub(crate) struct Ending(Next);

/// Serve HTTP/1.1 on `conn` as long as it is kept alive; then [`Conn::close`] it.
///
/// On a plain connection this future is part of the connection's task, and what it holds
/// between requests is what an idle keep-alive connection costs: a timer and the drain wait
/// (the connection and its service are the caller's). Everything else (reading a head, the
/// exchange, closing) runs in blocks of its own from the thread's pool (`pooled.rs`), given
/// back when done, so that their size is not part of it. A plain function returning an `async` block, not an `async fn`: an `async fn`
/// keeps its arguments in its state beside the locals it moves them into.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn serve<'a, IO: ClientIo>(
    conn: &'a mut Conn<IO>,
    service: &'a ProxyService,
) -> impl Future<Output = Ending> + Send + 'a {
    async move {
        let shared = service.shared();
        let mut first = true;
        loop {
            // The first head is due within the header timeout of the accept (the caller's
            // first read was the accept's); between requests, the idle timeout.
            let cfg = &service.settings().config;
            let quiet_for = match first {
                true => cfg.header_read_timeout,
                false => cfg.idle_timeout,
            };
            // The deadline comes back with `Ready`, not kept beside the timer holding it.
            let next = match conn.wait(Instant::now() + quiet_for).await {
                Waited::Ready(quiet_until) if IO::WAITS_WITHOUT_BUFFER => {
                    in_pool(|| conn.request(quiet_until, first, service, shared)).await
                }
                // A connection that waits by reading (TLS) waits in `head`: that block holds
                // the head's state only, and the exchange gets its own.
                // (The exchange's block is made inside the first `match` and awaited after it:
                // a head kept in an awaited `match` would stay in this state.)
                Waited::Ready(quiet_until) => {
                    let exchange =
                        match in_pool(|| conn.head(quiet_until, first, service, shared)).await {
                            Ok(parsed) => Ok(in_pool(|| exchange(conn, parsed, service, shared))),
                            Err(next) => Err(next),
                        };
                    match exchange {
                        Ok(exchange) => exchange.await,
                        Err(next) => next,
                    }
                }
                Waited::Closed => Next::Close,
                Waited::Quiet => {
                    if first {
                        shared.metrics.node.rejection(ErrorCode::ClientTimeout);
                    }
                    Next::Close
                }
            };
            first = false;
            if !matches!(next, Next::KeepAlive) {
                return Ending(next);
            }
        }
    }
}

/// How the wait for a request's first byte ended.
enum Waited {
    /// Bytes are (or may be) there: read the head; until its first byte, by this deadline.
    Ready(Instant),
    /// The client closed.
    Closed,
    /// Nothing came until `quiet_until`.
    Quiet,
}

pin_project_lite::pin_project! {
    /// [`Conn::wait`]: one future whether it waits or not (an awaited `Result` holding the
    /// wait would be kept in the state beside the wait moved out of it).
    #[project = WaitProj]
    enum Wait<'a, IO> {
        Now { waited: Option<Waited> },
        Idle { #[pin] idle: Idle<'a, IO> },
    }
}

impl<IO: ClientIo> Future for Wait<'_, IO> {
    type Output = Waited;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Waited> {
        match self.project() {
            WaitProj::Now { waited } => Poll::Ready(waited.take().unwrap_or(Waited::Closed)),
            WaitProj::Idle { idle } => idle.poll(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// The wait of an idle connection: what every idle keep-alive connection holds, so written
    /// out rather than a `select!` of async fns. A drain does not end it (see the top).
    struct Idle<'a, IO> {
        io: &'a mut IO,
        #[pin]
        quiet: tokio::time::Sleep,
    }
}

impl<IO: ClientIo> Future for Idle<'_, IO> {
    type Output = Waited;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Waited> {
        let this = self.project();
        if let Poll::Ready(r) = this.io.poll_readable(cx) {
            return Poll::Ready(match r {
                Ok(()) => Waited::Ready(this.quiet.deadline()),
                Err(_) => Waited::Closed,
            });
        }
        if this.quiet.poll(cx).is_ready() {
            return Poll::Ready(Waited::Quiet);
        }
        Poll::Pending
    }
}

enum HeadError {
    /// Nothing (or not a whole head) arrived in time; `started`: some of a head had.
    Timeout {
        started: bool,
    },
    Rejected(Rejection),
}

use head::Parsed;

impl<IO: ClientIo> Conn<IO> {
    /// Before a request: with nothing unread, give the buffer back and wait without one for
    /// the socket to be readable (until `quiet_until`). A connection that cannot
    /// wait without a buffer (TLS) waits by reading, in [`Self::read_head`].
    fn wait(&mut self, quiet_until: Instant) -> Wait<'_, IO> {
        let now = |waited| Wait::Now {
            waited: Some(waited),
        };
        if !self.buf.is_empty() {
            return now(Waited::Ready(quiet_until));
        }
        self.buf.release();
        if !IO::WAITS_WITHOUT_BUFFER {
            return now(Waited::Ready(quiet_until));
        }
        Wait::Idle {
            idle: Idle {
                io: &mut self.io,
                quiet: tokio::time::sleep_until(quiet_until),
            },
        }
    }

    /// One request: its head, then the exchange (or how the connection ends without one),
    /// in the one block the caller gives it.
    async fn request(
        &mut self,
        quiet_until: Instant,
        first: bool,
        service: &ProxyService,
        shared: &Shared,
    ) -> Next {
        match self.head(quiet_until, first, service, shared).await {
            Ok(parsed) => exchange(self, parsed, service, shared).await,
            Err(next) => next,
        }
    }

    /// A request's head read and parsed; `Err`: how the connection ends instead (a refused
    /// head is answered here).
    async fn head(
        &mut self,
        quiet_until: Instant,
        first: bool,
        service: &ProxyService,
        shared: &Shared,
    ) -> Result<Parsed, Next> {
        let cfg = &service.settings().config;
        let limits = Limits {
            max_head: cfg.max_header_size,
            ..Limits::default()
        };
        let read = self
            .read_head(quiet_until, cfg.header_read_timeout, &limits)
            .await;
        Err(match read {
            Ok(Some(parsed)) => return Ok(parsed),
            Ok(None) => Next::Close,
            Err(HeadError::Timeout { started }) => {
                if started || first {
                    shared.metrics.node.rejection(ErrorCode::ClientTimeout);
                }
                Next::Close
            }
            Err(HeadError::Rejected(r)) => {
                shared.metrics.node.rejection(r.code);
                tracing::info!(
                    code = r.code.as_str(),
                    why = r.why,
                    "request rejected before routing"
                );
                self.reject(r, service).await;
                Next::Linger
            }
        })
    }

    /// Close a connection that is not kept alive.
    pub(crate) async fn close(mut self, ending: Ending) {
        match ending.0 {
            Next::KeepAlive | Next::Close => {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
            }
            Next::Linger => self.linger().await,
            Next::Switch(to) => {
                let leftover = self.buf.take_unread();
                let _ = to.send(Box::new(Rewind::new(leftover, self.io)));
            }
        }
    }

    /// The next request head, after [`Self::wait`]. Until its first byte is read, it is due by
    /// `quiet_until`; from it, the whole head is due within `header_timeout`. `Ok(None)`: the
    /// client closed.
    async fn read_head(
        &mut self,
        quiet_until: Instant,
        header_timeout: Duration,
        limits: &Limits,
    ) -> Result<Option<Parsed>, HeadError> {
        let mut deadline = if self.buf.is_empty() {
            quiet_until
        } else {
            Instant::now() + header_timeout
        };
        loop {
            if !self.buf.is_empty() {
                if let Some(parsed) =
                    head::parse(self.buf.unread(), limits).map_err(HeadError::Rejected)?
                {
                    return Ok(Some(parsed));
                }
            }
            let was_empty = self.buf.is_empty();
            // The read first: the socket was readable when the wait ended, so the head is
            // most often there, and a timer polled first would be armed in the wheel and taken
            // out again for nothing (an unbiased `select!` polls in random order).
            let read = tokio::select! {
                biased;
                r = self.read_some(limits.max_head) => r,
                _ = tokio::time::sleep_until(deadline) => return Err(HeadError::Timeout { started: !was_empty }),
            };
            match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) if was_empty => deadline = Instant::now() + header_timeout,
                Ok(_) => {}
            }
        }
    }

    /// Read what the socket has into the buffer (0: closed, or the head limit reached).
    async fn read_some(&mut self, max: usize) -> io::Result<usize> {
        poll_fn(|cx| {
            let spare = self.buf.spare(max + 1);
            if spare.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let mut rb = ReadBuf::new(spare);
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            self.buf.filled(n);
            Poll::Ready(Ok(n))
        })
        .await
    }

    /// Answer a head refused before routing, from the error map's shape.
    async fn reject(&mut self, r: Rejection, service: &ProxyService) {
        let names = &service.settings().names;
        let body = format!("{}: {}\n", r.code.as_str(), r.why);
        let mut resp = http::Response::new(crate::instance::body::RespBody::full(body.into()));
        *resp.status_mut() =
            http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::BAD_REQUEST);
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            names.error.clone(),
            http::HeaderValue::from_static(r.code.as_str()),
        );
        let shape = Shape {
            head: false,
            http10: false,
            close: true,
        };
        let mut w = Writer::new(resp, shape, None);
        let written = poll_fn(|cx| w.poll_write(&mut self.io, cx));
        let _ = tokio::time::timeout(Duration::from_secs(5), written).await;
    }

    /// Close after reading (and dropping) what the client still sends, for up to 2 s or
    /// 64 MiB: our answer is already written, and is not to be lost to a reset. (1 MiB was too
    /// little: a client still uploading 16 MiB over loopback got the reset while it was still
    /// writing, and a client that reads its answer only after a failed write, as hyper's does,
    /// lost the answer. nginx's lingering close has no byte bound, only its 30 s.)
    async fn linger(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
        let mut left = 64usize << 20;
        let deadline = Instant::now() + Duration::from_secs(2);
        self.buf.consume(usize::MAX);
        while left > 0 {
            let read = tokio::time::timeout_at(deadline, self.read_some(buffers::SIZE)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {
                    left = left.saturating_sub(n);
                    self.buf.consume(n);
                }
                _ => return,
            }
        }
    }
}

/// One request: handed to the forwarding core, its body read as the core asks, its answer
/// written. Runs in a pooled block (in [`Conn::request`]'s, or its own), so an idle connection's task
/// does not hold its state.
async fn exchange<IO: ClientIo>(
    conn: &mut Conn<IO>,
    (request, facts, raw): Parsed,
    service: &ProxyService,
    shared: &Shared,
) -> Next {
    conn.buf.consume(facts.len);
    let (body, mut pump) = match facts.body {
        head::Body::None => (None, None),
        framing => {
            let length = match framing {
                head::Body::Length(n) => Some(n),
                _ => None,
            };
            let (body, feed) = inbound::channel(length);
            (Some(body), Pump::new(feed, framing, facts.expect_continue))
        }
    };
    // Built where it is pinned (a move of it is a copy of all its size), in a block of its
    // own: the request moves into the handling, and its place in this future's state goes
    // with the block.
    let switch;
    let mut handling = std::pin::pin!({
        let mut request = request.map(|()| match body {
            Some(b) => ClientBody::Inbound(b),
            None => ClientBody::Empty,
        });
        switch = facts.upgrade.then(|| {
            let (handover, to) = Handover::new();
            request.extensions_mut().insert(handover);
            to
        });
        let (service, routed) = service.for_request_raw(&request, raw.as_ref());
        // A head with fields of the proxy's own (current) prefix goes the general way.
        let prefix = service.settings().names.dash_prefix();
        let raw = match raw {
            Some(raw) if raw.prefixed(prefix) => {
                raw.fill_received(&mut request);
                None
            }
            raw => raw,
        };
        service.answering_http1().handle_raw(request, raw, routed)
    });
    // The body first: a `100 Continue` it owes goes out before any answer.
    let resp = poll_fn(|cx| {
        if let Some(p) = pump.as_mut() {
            let _ = p.poll(&mut conn.io, &mut conn.buf, false, cx);
        }
        handling.as_mut().poll(cx)
    })
    .await;
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS && switch.is_some();
    let broken = pump
        .as_ref()
        .is_some_and(|p| p.progress == Progress::Broken);
    let shape = Shape {
        head: facts.head,
        http10: facts.http10,
        close: !facts.keep_alive || broken || shared.drain.is_draining(),
    };
    let id_name = &service.settings().names.request_id;
    let mut writer = Writer::new(resp, shape, Some(id_name));
    let written = poll_fn(|cx| {
        if let Some(p) = pump.as_mut() {
            let _ = p.poll(&mut conn.io, &mut conn.buf, writer.started, cx);
            if p.writing_interim() {
                return Poll::Pending;
            }
        }
        writer.poll_write(&mut conn.io, cx)
    })
    .await;
    if let Err(e) = written {
        tracing::debug!(error = %e, "the answer could not be written whole");
        return Next::Close;
    }
    if switching {
        if let Some(to) = switch {
            return Next::Switch(to);
        }
    }
    let body_behind = pump.as_mut().is_none_or(|p| p.skip_buffered(&mut conn.buf));
    if !body_behind {
        return Next::Linger;
    }
    if writer.close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}
