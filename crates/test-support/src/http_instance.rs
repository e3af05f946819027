//! A fake HTTP instance (hyper, HTTP/1.1 or h2c) that says who it is and shows what it got.
//!
//! Routes: `/headers` answers the request headers as `name: value` lines; `/echo` streams the
//! request body back (with the request's trailers as response trailers); `/count` reads the whole
//! body, then answers its length; `/bytes/N` streams N
//! bytes; `/slow/MS` answers after MS milliseconds; `/reset` drops the connection; `/ws` is a
//! WebSocket echo; `/healthz` answers the status the test set with [`HttpInstance::set_health`]
//! (200 at first); anything else answers the instance's name.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What `/healthz` answers, and how often it was asked.
struct Health {
    status: AtomicU16,
    checks: AtomicUsize,
}

pub struct HttpInstance {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    health: Arc<Health>,
    _stop: oneshot::Sender<()>,
}

impl HttpInstance {
    /// An HTTP/1.1 instance; with `h2`, it speaks h2c (prior knowledge) only.
    pub async fn start(name: &str, h2: bool) -> HttpInstance {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http instance");
        let addr = listener.local_addr().expect("addr");
        let (stop, mut stopped) = oneshot::channel();
        let requests = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(Health {
            status: AtomicU16::new(200),
            checks: AtomicUsize::new(0),
        });
        let (name, count, healthz) = (Arc::<str>::from(name), requests.clone(), health.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stopped => return,
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                };
                let (name, count, healthz) = (name.clone(), count.clone(), healthz.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        if req.uri().path() == "/healthz" {
                            healthz.checks.fetch_add(1, Ordering::SeqCst);
                        } else {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        handle(name.clone(), healthz.status.load(Ordering::SeqCst), req)
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades()
                            .await;
                    }
                });
            }
        });
        HttpInstance {
            addr,
            requests,
            health,
            _stop: stop,
        }
    }

    /// Requests served, `/healthz` not counted.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Make `/healthz` answer `status` from now on.
    pub fn set_health(&self, status: u16) {
        self.health.status.store(status, Ordering::SeqCst);
    }

    /// `/healthz` requests served.
    pub fn health_checks(&self) -> usize {
        self.health.checks.load(Ordering::SeqCst)
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

async fn handle(
    name: Arc<str>,
    health: u16,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/healthz" => {
            let mut r = Response::new(full(format!("{name} {health}\n")));
            *r.status_mut() = StatusCode::from_u16(health).unwrap_or(StatusCode::OK);
            r
        }
        "/headers" => {
            let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<binary>")));
            }
            Response::new(full(text))
        }
        "/echo" => {
            let announced = req.headers().get("trailer").cloned();
            let mut resp = Response::new(req.into_body().map_err(|e| Box::new(e) as _).boxed());
            if let Some(t) = announced {
                resp.headers_mut().insert("trailer", t);
            }
            resp
        }
        "/count" => {
            // Read the whole body first, then answer with its length.
            match req.into_body().collect().await {
                Ok(b) => Response::new(full(format!("{}\n", b.to_bytes().len()))),
                Err(_) => {
                    return std::future::pending::<Result<Response<Body>, Infallible>>().await
                }
            }
        }
        "/reset" => {
            // Answer nothing and drop the connection.
            return std::future::pending::<Result<Response<Body>, Infallible>>().await;
        }
        "/ws" => return Ok(websocket(req)),
        p if p.starts_with("/bytes/") => {
            let n: u64 = p["/bytes/".len()..].parse().unwrap_or(0);
            Response::new(stream_bytes(n))
        }
        p if p.starts_with("/slow/") => {
            let ms: u64 = p["/slow/".len()..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(format!("{name}\n")))
        }
        _ => Response::new(full(format!("{name}\n"))),
    };
    let mut resp = resp;
    resp.headers_mut()
        .insert("x-instance", name.parse().expect("header value"));
    Ok(resp)
}

/// N bytes in 64 KiB chunks, produced as they are read (nothing buffered whole).
fn stream_bytes(n: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'z'; CHUNK as usize]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(CHUNK);
                (
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                        chunk.slice(..take as usize),
                    )),
                    left - take,
                )
            })
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Accept a WebSocket upgrade and echo every message.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request\n"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(ws_config()),
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().expect("value"));
    h.insert("connection", "upgrade".parse().expect("value"));
    h.insert("sec-websocket-accept", accept.parse().expect("value"));
    r
}

/// Messages up to 2 MiB.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(2 << 20),
        max_frame_size: Some(2 << 20),
        ..Default::default()
    }
}
