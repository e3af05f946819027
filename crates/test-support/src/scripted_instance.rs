//! A scriptable HTTP/1.1 instance for placement, admission and replay tests.
//!
//! It records every request it gets ([`Seen`]: method, path, headers and, where the route reads
//! it, the body), counts requests in flight and the most ever in flight, holds requests until the
//! test releases them, asks for replays, and can be killed like a crashed process: the listener
//! closes, idle keep-alive connections close, a response being written is finished, and requests
//! that arrive afterwards get no answer at all (the connection closes under them).
//!
//! Routes (every response carries `x-instance: NAME`):
//! - `/hold`: waits until the test calls [`ScriptedInstance::release`], then answers `NAME`.
//! - `/slow/MS`: answers `NAME` after MS milliseconds.
//! - `/replay?to=VALUE[&always=1][&drain=1|&read=1]`: without an `anyedge-replay-src` request
//!   header (or with `always=1`), answers with `anyedge-replay: VALUE` (percent-decoded). At
//!   once, on the request head alone: the body is left unread (hyper then closes the
//!   connection), or with `drain=1` read and discarded after the answer, as a server that
//!   lingers does; with `read=1` only after reading the whole body. Otherwise like any other
//!   path.
//! - `/drop`: closes the connection without answering (nothing of a response is sent).
//! - `/truncate`: answers 200 with `content-length: 1000`, sends 10 bytes and closes.
//! - anything else: reads the whole body, answers `NAME` with `x-body-len: N`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// One request as the instance received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    pub headers: http::HeaderMap,
    /// `None` when the route answered without reading the body.
    pub body: Option<Bytes>,
}

impl Seen {
    /// The request's value of header `name` as text (the first one), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    answered: AtomicUsize,
    held: AtomicUsize,
    /// Requests that arrived after the kill and were dropped unanswered.
    lost: AtomicUsize,
    /// Of those, or of connections closed by the kill, the ones that were the first request
    /// on their connection (a proxy cannot know such a request was not processed).
    lost_first: AtomicUsize,
    open_connections: AtomicUsize,
    killed: AtomicBool,
}

impl State {
    /// Record a request (its body not read yet); returns its index in `seen`.
    fn record(&self, parts: &http::request::Parts, path: &str) -> usize {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.push(Seen {
            method: parts.method.clone(),
            path: path.to_string(),
            headers: parts.headers.clone(),
            body: None,
        });
        seen.len() - 1
    }

    /// The body of request `at`, once read.
    fn set_body(&self, at: usize, body: Bytes) {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)[at].body = Some(body);
    }
}

/// Held while a request is being handled.
struct InFlight(Arc<State>);

impl InFlight {
    fn enter(state: &Arc<State>) -> InFlight {
        let now = state.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_inflight.fetch_max(now, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct ScriptedInstance {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<State>,
    holds: Arc<Semaphore>,
    kill: watch::Sender<bool>,
    acceptor: Option<JoinHandle<()>>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Dropped>;

/// The error a handler returns to make hyper close the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("instance killed")
    }
}

impl std::error::Error for Dropped {}

impl ScriptedInstance {
    pub async fn start(name: &str) -> ScriptedInstance {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted instance");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let holds = Arc::new(Semaphore::new(0));
        let (kill, killed) = watch::channel(false);
        let acceptor = tokio::spawn(accept_loop(
            listener,
            Arc::from(name),
            state.clone(),
            holds.clone(),
            killed,
        ));
        ScriptedInstance {
            addr,
            name: name.to_string(),
            state,
            holds,
            kill,
            acceptor: Some(acceptor),
        }
    }

    /// Every request received so far, in arrival order (bodies filled in once read).
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests received (answered or not).
    pub fn requests(&self) -> usize {
        self.state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Requests answered.
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }

    pub fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::SeqCst)
    }

    /// The most requests ever handled at once.
    pub fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }

    /// Requests waiting in `/hold` now.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Let `n` held requests (present or future) answer.
    pub fn release(&self, n: usize) {
        self.holds.add_permits(n);
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.open_connections.load(Ordering::SeqCst)
    }

    /// Requests that reached the instance after [`kill`](Self::kill) and got no answer.
    pub fn lost(&self) -> usize {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// Of the requests the kill cut off, those a proxy could not have retried safely: the
    /// first request on a connection (counted also for connections closed by the kill before
    /// any request was read from them).
    pub fn lost_first(&self) -> usize {
        self.state.lost_first.load(Ordering::SeqCst)
    }

    /// Stop like a crashed process, and return once every connection is closed: the listener
    /// goes (new connections are refused), idle connections close, responses being written are
    /// finished, requests arriving from now on are dropped unanswered.
    pub async fn kill(&mut self) {
        self.state.killed.store(true, Ordering::SeqCst);
        let _ = self.kill.send(true);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
            let _ = acceptor.await;
        }
        // Held requests are released so their connections can close.
        self.holds.close();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.open_connections() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: connections still open 10 s after the kill",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for ScriptedInstance {
    fn drop(&mut self) {
        self.state.killed.store(true, Ordering::SeqCst);
        let _ = self.kill.send(true);
        self.holds.close();
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    state: Arc<State>,
    holds: Arc<Semaphore>,
    killed: watch::Receiver<bool>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.open_connections.fetch_add(1, Ordering::SeqCst);
        let (name, state, holds, mut killed) =
            (name.clone(), state.clone(), holds.clone(), killed.clone());
        tokio::spawn(async move {
            // Requests this connection has started to handle.
            let started = Arc::new(AtomicUsize::new(0));
            let svc = {
                let (state, started) = (state.clone(), started.clone());
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let first = started.fetch_add(1, Ordering::SeqCst) == 0;
                    handle(name.clone(), state.clone(), holds.clone(), first, req)
                })
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let kill = tokio::select! {
                _ = &mut conn => false,
                r = killed.wait_for(|k| *k) => r.is_ok(),
            };
            if kill {
                if started.load(Ordering::SeqCst) == 0 {
                    // A request may sit unread in this connection's buffer.
                    state.lost_first.fetch_add(1, Ordering::SeqCst);
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            state.open_connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn handle(
    name: Arc<str>,
    state: Arc<State>,
    holds: Arc<Semaphore>,
    first: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let record = || state.record(&parts, &path);
    if state.killed.load(Ordering::SeqCst) {
        record();
        state.lost.fetch_add(1, Ordering::SeqCst);
        if first {
            state.lost_first.fetch_add(1, Ordering::SeqCst);
        }
        return Err(Dropped);
    }
    let _inflight = InFlight::enter(&state);
    let route = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let mut resp = if route == "/drop" {
        record();
        return Err(Dropped);
    } else if route == "/truncate" {
        record();
        truncated()
    } else if route == "/hold" {
        record();
        hold(&name, &state, &holds).await
    } else if let Some(ms) = route.strip_prefix("/slow/") {
        record();
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        text(&format!("{name}\n"))
    } else if route == "/replay"
        && (!parts.headers.contains_key("anyedge-replay-src") || param(query, "always").is_some())
    {
        let at = record();
        replay(&name, &state, at, query, body).await?
    } else {
        let at = record();
        read_all(&name, &state, at, body).await?
    };
    resp.headers_mut().insert(
        "x-instance",
        http::HeaderValue::try_from(&*name).expect("instance name"),
    );
    state.answered.fetch_add(1, Ordering::SeqCst);
    Ok(resp)
}

/// `/truncate`: 200 with `content-length: 1000`, and a body that fails after 10 bytes.
fn truncated() -> Response<Body> {
    // The head and 10 bytes are flushed while the stream waits; then the connection goes.
    let frames = futures_util::stream::unfold(0, |step| async move {
        match step {
            0 => Some((
                Ok(hyper::body::Frame::data(Bytes::from_static(b"0123456789"))),
                1,
            )),
            1 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Err(Dropped), 2))
            }
            _ => None,
        }
    });
    let mut r = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)));
    r.headers_mut().insert("content-length", 1000.into());
    r
}

/// `/hold`: wait for a permit from [`ScriptedInstance::release`], then answer `NAME`.
async fn hold(name: &str, state: &State, holds: &Semaphore) -> Response<Body> {
    state.held.fetch_add(1, Ordering::SeqCst);
    if let Ok(permit) = holds.acquire().await {
        permit.forget();
    }
    state.held.fetch_sub(1, Ordering::SeqCst);
    text(&format!("{name}\n"))
}

/// `/replay?to=VALUE`: ask for a replay, with the body of request `at` read first (`read=1`),
/// after the answer (`drain=1`), or not at all.
async fn replay(
    name: &str,
    state: &State,
    at: usize,
    query: &str,
    body: Incoming,
) -> Result<Response<Body>, Dropped> {
    if param(query, "read").is_some() {
        let bytes = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        state.set_body(at, bytes);
    } else if param(query, "drain").is_some() {
        // Read the body after answering, as a server that lingers would.
        tokio::spawn(async move {
            let _ = body.collect().await;
        });
    }
    let to = param(query, "to").unwrap_or_default();
    let mut r = text(&format!("{name} asks for a replay\n"));
    r.headers_mut().insert(
        "anyedge-replay",
        http::HeaderValue::try_from(to).expect("replay header value"),
    );
    Ok(r)
}

/// Any other path: read the whole body of request `at`, answer `NAME` with `x-body-len`.
async fn read_all(
    name: &str,
    state: &State,
    at: usize,
    body: Incoming,
) -> Result<Response<Body>, Dropped> {
    let bytes = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let len = bytes.len();
    state.set_body(at, bytes);
    let mut r = text(&format!("{name}\n"));
    r.headers_mut().insert("x-body-len", len.into());
    Ok(r)
}

fn text(s: &str) -> Response<Body> {
    Response::new(
        Full::new(Bytes::from(s.to_string()))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    )
}

/// The percent-decoded value of `key` in a query string.
fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encode `s` for a query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// The value of one series (`name{labels}`, exactly as rendered) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip() {
        let v = "region=syd;fallback=force_self, x&y";
        let q = format!("a=1&to={}&always=1", percent_encode(v));
        assert_eq!(param(&q, "to").as_deref(), Some(v));
        assert_eq!(param(&q, "always").as_deref(), Some("1"));
        assert_eq!(param("always", "always").as_deref(), Some(""));
        assert_eq!(param(&q, "nope"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn metric_values_by_exact_series() {
        let t = "a{x=\"1\"} 3\na{x=\"10\"} 4\n";
        assert_eq!(metric(t, "a{x=\"1\"}"), Some(3.0));
        assert_eq!(metric(t, "a{x=\"10\"}"), Some(4.0));
        assert_eq!(metric(t, "a{x=\"2\"}"), None);
    }
}
