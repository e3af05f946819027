//! The edge's HTTP/2 client for backhaul, on the `h2` crate itself rather than hyper's client.
//!
//! hyper's HTTP/2 client hands every request to the connection's task over a channel, spawns a
//! task per request to wait for its response, and sends the response back over a oneshot: about a
//! tenth of the edge's instructions per backhaul request (`bench/callgrind.sh`). Here the request's
//! own task opens the stream and waits for its response; the connection's task only moves bytes
//! and answers the keep-alive pings. A request body is piped by the request's task while it waits
//! for the response head, and by a task of its own only when the response comes first.
//!
//! Protocol switches (extended CONNECT for WebSockets) keep hyper's client: they need its
//! upgrade machinery, and they are rare (see [`super::link::Link::upgrade_sender`]).

use crate::instance::body::BodyError;
use crate::instance::h2body::{Cancel, Pipe};
pub(crate) use crate::instance::h2body::{RecvBody, StreamError};
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, RecvStream};
use http::{Request, Response};
use http_body::Body;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Receive windows, fixed rather than hyper's adaptive ones (which grow with the measured
/// bandwidth-delay product): a response a slow client has not read yet holds at most a stream's
/// window here, and with a connection window no larger than a stream's, one stalled download
/// would stall every app's requests on that connection.
pub(crate) use anyedge_backhaul::{CONNECTION_WINDOW, STREAM_WINDOW};
/// Request bodies: how much is queued on the connection for one stream before its pipe waits.
const SEND_BUFFER: usize = 1024 * 1024;

/// A send that failed.
pub(crate) enum SendFailed {
    /// The connection was closed before the stream opened: nothing was sent.
    Unsent,
    Failed(StreamError),
}

/// One HTTP/2 connection to a worker: cheap to clone, shared by every request on it.
#[derive(Clone)]
pub(crate) struct Conn {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Conn {
    /// Whether the connection ended (closed by either side, or its keep-alive went unanswered).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The HTTP/2 handshake on `io`, and the connection's task, which runs until the connection
    /// ends; `on_end` runs then.
    pub async fn handshake<T>(
        io: T,
        ping_interval: Duration,
        ping_timeout: Duration,
        on_end: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<Conn, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let done = closed.clone();
        tokio::spawn(async move {
            let result = drive(conn, ping_interval, ping_timeout).await;
            done.store(true, Ordering::Release);
            on_end(result);
        });
        Ok(Conn { send, closed })
    }

    /// Send a request: its head now, its body as it comes; the response's head when it arrives.
    /// Hop-by-hop headers must already be gone (HTTP/2 refuses them).
    pub async fn send<B>(&self, req: Request<B>) -> Result<Response<RecvBody>, SendFailed>
    where
        B: Body<Data = Bytes, Error = BodyError> + Send + Unpin + 'static,
    {
        let (parts, body) = req.into_parts();
        // A connection that takes no new stream (the worker said GOAWAY, or it is gone) is
        // marked closed at once, so that the next request picks another.
        let mut send = match self.send.clone().ready().await {
            Ok(s) => s,
            Err(_) => {
                self.closed.store(true, Ordering::Release);
                return Err(SendFailed::Unsent);
            }
        };
        let end = body.is_end_stream();
        let (response, stream) = match send.send_request(Request::from_parts(parts, ()), end) {
            Ok(r) => r,
            // The connection went away between `ready` and here: nothing left this node.
            Err(e) if e.is_go_away() || e.is_io() => {
                self.closed.store(true, Ordering::Release);
                return Err(SendFailed::Unsent);
            }
            Err(e) => return Err(SendFailed::Failed(e.into())),
        };
        let (head, cancel) = if end {
            (response.await, None)
        } else {
            // Boxed: only requests with a body get here, and the pipe may outlive this call.
            let pipe = Box::pin(Pipe {
                body,
                stream,
                pending: None,
                finished: false,
                cancel: None,
            });
            with_body(response, pipe).await?
        };
        let resp = head.map_err(|e| SendFailed::Failed(e.into()))?;
        Ok(resp.map(|recv| RecvBody::new(recv, cancel)))
    }
}

/// Wait for the response head while the body goes out. A body that fails (over the limit, the
/// client gone) fails the request; any other end of the pipe (the worker reset the stream, or
/// answered and closed it) leaves the verdict to the response, which carries the reason. A
/// response that comes first leaves the rest of the body to a task of its own (the worker may
/// still read it), with a handle that stops it if the response is dropped unfinished.
#[allow(clippy::type_complexity)]
async fn with_body<B>(
    mut response: ResponseFuture,
    mut pipe: Pin<Box<Pipe<B>>>,
) -> Result<(Result<Response<RecvStream>, h2::Error>, Option<Arc<Cancel>>), SendFailed>
where
    B: Body<Data = Bytes, Error = BodyError> + Send + Unpin + 'static,
{
    let mut piping = true;
    let head = poll_fn(|cx| {
        if piping {
            match pipe.as_mut().poll(cx) {
                Poll::Ready(Err(StreamError::Body(e))) => {
                    return Poll::Ready(Err(SendFailed::Failed(StreamError::Body(e))))
                }
                Poll::Ready(_) => piping = false,
                Poll::Pending => {}
            }
        }
        Pin::new(&mut response).poll(cx).map(Ok)
    })
    .await?;
    let mut cancel = None;
    if piping && head.is_ok() {
        let handle = Arc::new(Cancel::default());
        pipe.cancel = Some(handle.clone());
        cancel = Some(handle);
        tokio::spawn(async move {
            if let Err(e) = pipe.await {
                tracing::debug!(error = %e, "request body to the worker ended early");
            }
        });
    }
    Ok((head, cancel))
}

/// The connection's task: move frames until the connection ends, and ping the worker every
/// `interval` while open; a ping unanswered for `timeout` drops the connection (a dead worker or
/// path), which fails its streams so that their requests are placed again.
async fn drive<T>(
    mut conn: h2::client::Connection<T, Bytes>,
    interval: Duration,
    timeout: Duration,
) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    enum Step {
        Ended(Result<(), h2::Error>),
        Pong(Result<h2::Pong, h2::Error>),
        Timer,
    }
    let mut pings = conn.ping_pong();
    let mut awaiting_pong = false;
    // One timer, moved rather than made anew: this task wakes for every frame.
    let timer = tokio::time::sleep(interval);
    tokio::pin!(timer);
    loop {
        let step = poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
                return Poll::Ready(Step::Ended(r));
            }
            if awaiting_pong {
                if let Some(Poll::Ready(r)) = pings.as_mut().map(|p| p.poll_pong(cx)) {
                    return Poll::Ready(Step::Pong(r));
                }
            }
            timer.as_mut().poll(cx).map(|()| Step::Timer)
        })
        .await;
        let now = tokio::time::Instant::now();
        match step {
            Step::Ended(r) => return r.map_err(|e| e.to_string()),
            Step::Pong(Err(e)) => return Err(format!("keep-alive ping: {e}")),
            Step::Pong(Ok(_)) => {
                awaiting_pong = false;
                timer.as_mut().reset(now + interval);
            }
            Step::Timer if awaiting_pong => {
                return Err(format!("keep-alive ping unanswered for {timeout:?}"));
            }
            Step::Timer => match pings.as_mut().map(|p| p.send_ping(Ping::opaque())) {
                Some(Ok(())) => {
                    awaiting_pong = true;
                    timer.as_mut().reset(now + timeout);
                }
                Some(Err(e)) => return Err(format!("keep-alive ping: {e}")),
                None => timer.as_mut().reset(now + interval),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::body::ReqBody;
    use anyedge_telemetry::AppMetrics;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::task::Context;
    use tokio::io::DuplexStream;
    use tokio::sync::{mpsc, oneshot, Notify};

    /// A client body of ready chunks; then its end, or (`stalls`) nothing more, ever.
    struct Chunks {
        chunks: VecDeque<Bytes>,
        stalls: bool,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let this = self.get_mut();
            match this.chunks.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
                None if this.stalls => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
        fn is_end_stream(&self) -> bool {
            self.chunks.is_empty() && !self.stalls
        }
    }

    /// `n` chunks of 50,000 counting bytes, as a request body limited to `max_body` bytes.
    fn body(n: usize, max_body: u64) -> ReqBody<Chunks> {
        let chunks = (0..n)
            .map(|c| {
                Bytes::from(
                    (0..50_000)
                        .map(|i| ((c * 50_000 + i) % 251) as u8)
                        .collect::<Vec<u8>>(),
                )
            })
            .collect();
        ReqBody::new(
            Chunks {
                chunks,
                stalls: false,
            },
            0,
            max_body,
            Arc::new(AppMetrics::default()),
        )
    }

    fn request(body: ReqBody<Chunks>) -> Request<ReqBody<Chunks>> {
        let mut req = Request::new(body);
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = http::Uri::from_static("http://worker/count");
        req
    }

    /// A worker stand-in on `io`: answers each stream with the number of body bytes it got, in
    /// order, first the head (`early`) or only after the whole body; `got` hears each total.
    /// Once `hang` is notified it stops reading the connection altogether (a hung peer).
    fn worker(
        io: DuplexStream,
        early: bool,
        got: mpsc::UnboundedSender<Vec<u8>>,
        hang: Arc<Notify>,
    ) {
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(io).await.expect("server handshake");
            loop {
                let (req, mut respond) = tokio::select! {
                    next = conn.accept() => match next {
                        Some(Ok(stream)) => stream,
                        _ => return,
                    },
                    _ = hang.notified() => break,
                };
                let got = got.clone();
                tokio::spawn(async move {
                    let mut send = early.then(|| {
                        respond
                            .send_response(Response::new(()), false)
                            .expect("head")
                    });
                    let mut body = req.into_body();
                    let mut all = Vec::new();
                    while let Some(Ok(d)) = body.data().await {
                        let _ = body.flow_control().release_capacity(d.len());
                        all.extend_from_slice(&d);
                    }
                    let len = Bytes::from(all.len().to_string());
                    let _ = got.send(all);
                    let mut send = send.take().unwrap_or_else(|| {
                        respond
                            .send_response(Response::new(()), false)
                            .expect("head")
                    });
                    let _ = send.send_data(len, true);
                });
            }
            // Hold the connection without polling it: nothing is read or answered any more.
            std::future::pending::<()>().await;
            drop(conn);
        });
    }

    async fn connect(
        early: bool,
    ) -> (
        Conn,
        mpsc::UnboundedReceiver<Vec<u8>>,
        Arc<Notify>,
        oneshot::Receiver<Result<(), String>>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (got_tx, got) = mpsc::unbounded_channel();
        let hang = Arc::new(Notify::new());
        worker(server, early, got_tx, hang.clone());
        let (end_tx, ended) = oneshot::channel();
        let conn = Conn::handshake(
            client,
            Duration::from_secs(5),
            Duration::from_secs(5),
            move |r| {
                let _ = end_tx.send(r);
            },
        )
        .await
        .expect("client handshake");
        (conn, got, hang, ended)
    }

    fn counting(bytes: &[u8]) -> bool {
        bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8)
    }

    /// 2 MB against the worker's 64 KiB default window, so the pipe waits for capacity often:
    /// all of it arrives, in order, whether the worker answers after the whole body or first
    /// (then the rest of the body goes on in a task of its own).
    #[tokio::test]
    async fn a_body_many_windows_long_arrives_whole_before_or_after_the_answer() {
        for early in [false, true] {
            let (conn, mut got, _hang, _) = connect(early).await;
            let resp = conn
                .send(request(body(40, 0)))
                .await
                .ok()
                .expect("response");
            let seen = got.recv().await.expect("the worker's count");
            assert_eq!(seen.len(), 2_000_000, "early={early}");
            assert!(counting(&seen), "bytes out of order (early={early})");
            let text = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(text, "2000000", "early={early}");
        }
    }

    #[tokio::test]
    async fn a_body_over_its_limit_fails_the_send_with_that_reason() {
        let (conn, _got, _hang, _) = connect(false).await;
        match conn.send(request(body(40, 1_000_000))).await {
            Err(SendFailed::Failed(StreamError::Body(BodyError::TooLarge { limit }))) => {
                assert_eq!(limit, 1_000_000)
            }
            Err(SendFailed::Failed(e)) => panic!("wrong failure: {e}"),
            Err(SendFailed::Unsent) => panic!("it was sent"),
            Ok(_) => panic!("a body over its limit must fail"),
        }
        // The stream was reset, not the connection.
        let resp = conn.send(request(body(1, 0))).await.ok().expect("response");
        let text = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(text, "50000");
    }

    #[tokio::test]
    async fn a_response_dropped_unfinished_resets_the_body_still_going_out() {
        let (conn, mut got, _hang, _) = connect(true).await;
        let body = ReqBody::new(
            Chunks {
                chunks: VecDeque::from([Bytes::from_static(b"first")]),
                stalls: true,
            },
            0,
            0,
            Arc::new(AppMetrics::default()),
        );
        let mut req = Request::new(body);
        *req.uri_mut() = http::Uri::from_static("http://worker/count");
        let resp = conn.send(req).await.ok().expect("the early head");
        // The client goes away: its response is dropped with the upload still open. The worker
        // must see the stream end (reset), not wait for the rest forever.
        drop(resp);
        let seen = tokio::time::timeout(Duration::from_secs(5), got.recv())
            .await
            .expect("the worker saw the stream end")
            .expect("its count");
        assert_eq!(seen, b"first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_stops_answering_pings_loses_its_connection() {
        let (conn, _got, hang, ended) = connect(false).await;
        // Answering: pings come and go, the connection stays.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!conn.is_closed());
        let resp = conn.send(request(body(1, 0))).await.ok().expect("response");
        drop(resp);
        // Hung: within a ping interval and a ping timeout the connection is given up.
        hang.notify_one();
        let started = tokio::time::Instant::now();
        let why = tokio::time::timeout(Duration::from_secs(30), ended)
            .await
            .expect("ended in time")
            .expect("reported");
        assert!(started.elapsed() <= Duration::from_secs(10) + Duration::from_millis(50));
        assert!(why.expect_err("an error").contains("unanswered"));
        assert!(conn.is_closed());
        assert!(matches!(
            conn.send(request(body(1, 0))).await,
            Err(SendFailed::Unsent)
        ));
    }
}
