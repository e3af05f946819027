//! HTTP clients for system tests: HTTP/1.1 and h2c (prior knowledge) on hyper's low-level
//! connections, so tests see exactly what went over the wire.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub type ClientBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn empty() -> ClientBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub enum Client {
    H1(http1::SendRequest<ClientBody>),
    H2(http2::SendRequest<ClientBody>),
}

impl Client {
    pub async fn h1(addr: SocketAddr) -> Client {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (send, conn) = http1::handshake(io).await.expect("h1 handshake");
        tokio::spawn(conn.with_upgrades());
        Client::H1(send)
    }

    /// HTTP/1.1 or HTTP/2 over any connected stream (TLS), by `h2`.
    pub async fn over<IO>(io: IO, h2: bool) -> Client
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = http1::handshake(io).await.expect("h1 handshake");
            tokio::spawn(conn.with_upgrades());
            Client::H1(send)
        }
    }

    /// h2c (prior knowledge) when `h2`, else HTTP/1.1, over plain TCP.
    pub async fn plain(addr: SocketAddr, h2: bool) -> Client {
        if h2 {
            Client::h2c(addr).await
        } else {
            Client::h1(addr).await
        }
    }

    pub async fn h2c(addr: SocketAddr) -> Client {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (send, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        Client::H2(send)
    }

    pub async fn send(&mut self, req: Request<ClientBody>) -> hyper::Result<Response<Incoming>> {
        match self {
            Client::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Client::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// GET `path` on `host`: (status, headers, body as text).
    pub async fn get(&mut self, host: &str, path: &str) -> (u16, http::HeaderMap, String) {
        let req = request("GET", host, path, self.is_h2())
            .body(empty())
            .expect("request");
        let resp = self.send(req).await.expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Client::H2(_))
    }
}

/// A request builder with the host where each protocol expects it.
pub fn request(method: &str, host: &str, path: &str, h2: bool) -> http::request::Builder {
    if h2 {
        Request::builder()
            .method(method)
            .uri(format!("http://{host}{path}"))
    } else {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
    }
}
