//! The demo's built-in TCP instances, on 127.0.0.1 ephemeral ports.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
pub enum Kind {
    /// Sends back every byte.
    Echo,
    /// Answers each line upper-cased, like the work sample's public echo server.
    Upper,
    /// Reads a PROXY v1 header and greets the client by its address.
    WhoAmI(&'static str),
}

pub async fn spawn(kind: Kind) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = match kind {
                    Kind::Echo => echo(stream).await,
                    Kind::Upper => upper(stream).await,
                    Kind::WhoAmI(name) => whoami(stream, name).await,
                };
            });
        }
    });
    Ok(addr)
}

/// An HTTP instance that says who it is; `/ws` is a WebSocket echo. It runs until `stop`
/// says true: then its listener and every connection it has close, as a process that stopped.
pub async fn spawn_http(
    app: &'static str,
    name: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name: std::sync::Arc<str> = name.into();
    tokio::spawn(async move {
        let mut stopped = stop.clone();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let Ok((stream, _)) = accepted else { return };
            let name = name.clone();
            let mut stopped = stop.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| http_answer(app, name.clone(), req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::select! {
                    _ = conn => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
            });
        }
    });
    Ok(addr)
}

/// Serve [`spawn_http`]'s instance on `listener` until the future is dropped.
pub async fn serve_http(listener: TcpListener, app: &'static str, name: String) {
    let name: std::sync::Arc<str> = name.into();
    while let Ok((stream, _)) = listener.accept().await {
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| http_answer(app, name.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

type HttpBody = http_body_util::Full<bytes::Bytes>;

async fn http_answer(
    app: &'static str,
    name: std::sync::Arc<str>,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<HttpBody>, std::convert::Infallible> {
    if req.uri().path() == "/ws" {
        if let Some(resp) = ws_accept(&mut req) {
            return Ok(resp);
        }
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = req.uri().path();
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        // Holds a request slot, to show spill-over to the next region.
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let replayed = header("anyedge-replay-src");
    if path == "/write" && !name.contains("-syd-") && replayed.is_none() {
        // The app's primary is in syd: writes elsewhere ask the proxy to replay them there.
        return Ok(replay_in_syd());
    }
    let client = header("anyedge-client-ip").unwrap_or_else(|| "?".into());
    let mut body = format!(
        "hello from {name} (app {app}); you are {client}, request {} {path}\n",
        req.method(),
    );
    if let Some(src) = replayed {
        body.push_str(&format!("replayed here by the proxy: {src}\n"));
    }
    Ok(hyper::Response::new(HttpBody::new(bytes::Bytes::from(
        body,
    ))))
}

/// A WebSocket handshake (a request with `sec-websocket-key`): the 101 answer, with an echo
/// spawned on the upgraded connection. `None` for any other request.
fn ws_accept(req: &mut hyper::Request<hyper::body::Incoming>) -> Option<hyper::Response<HttpBody>> {
    let key = req.headers().get("sec-websocket-key").cloned()?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(ws_echo(upgrade));
    let mut resp = hyper::Response::new(HttpBody::default());
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        "upgrade",
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        "connection",
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(v) = hyper::header::HeaderValue::try_from(accept) {
        h.insert("sec-websocket-accept", v);
    }
    Some(resp)
}

/// 409 with `anyedge-replay: region=syd;state=write`: the proxy replays the request in syd.
fn replay_in_syd() -> hyper::Response<HttpBody> {
    let mut resp = hyper::Response::new(HttpBody::default());
    *resp.status_mut() = hyper::StatusCode::CONFLICT;
    resp.headers_mut().insert(
        "anyedge-replay",
        hyper::header::HeaderValue::from_static("region=syd;state=write"),
    );
    resp
}

async fn ws_echo(upgrade: hyper::upgrade::OnUpgrade) {
    use futures_util::{SinkExt, StreamExt};
    let Ok(upgraded) = upgrade.await else { return };
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        None,
    )
    .await;
    let (mut tx, mut rx) = ws.split();
    while let Some(Ok(msg)) = rx.next().await {
        if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
            break;
        }
    }
}

/// A port nothing listens on (bound, then released), for a target that refuses.
pub fn unused_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

async fn upper(stream: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        w.write_all(format!("{}\n", line.to_uppercase()).as_bytes())
            .await?;
    }
    w.shutdown().await
}

async fn whoami(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let client = match lines.next_line().await? {
        Some(header) => header
            .strip_prefix("PROXY ")
            .and_then(|rest| {
                let f: Vec<&str> = rest.split(' ').collect();
                (f.len() == 5).then(|| format!("{}:{}", f[1], f[3]))
            })
            .unwrap_or_else(|| "someone without a PROXY header".into()),
        None => return Ok(()),
    };
    while let Some(line) = lines.next_line().await? {
        w.write_all(format!("hello {client}, this is {name}; you said: {line}\n").as_bytes())
            .await?;
    }
    w.shutdown().await
}
