//! Long and large exchanges through the HTTP edge: WebSockets over HTTP/1.1 and HTTP/2 extended
//! CONNECT, 100 MB bodies each way with memory staying flat, chunked bodies with trailers, and
//! the rejections hyper makes before routing.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::{request, Client, ClientBody};
use anyedge_test_support::http_instance::{ws_config, HttpInstance};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn one_app(extra_http: &str) -> (Node, u16, HttpInstance) {
    let inst = HttpInstance::start("alpha", false).await;
    let port = free_port();
    let toml = format!(
        "[http]\n{extra_http}\n[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"a\"\n  address = \"{}\"\n",
        inst.addr
    );
    let config = anyedge_config::parse(&toml, "t.toml").unwrap_or_else(|d| panic!("{d}"));
    (
        Node::start(config, Some(local(0))).await.expect("node"),
        port,
        inst,
    )
}

/// Text and binary messages from 1 byte to 1 MiB come back unchanged.
async fn echo_messages<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for size in [1usize, 125, 126, 65_535, 65_536, 1 << 20] {
        let text: String = "é".repeat(size / 2) + &"x".repeat(size % 2);
        for msg in [
            Message::text(text.clone()),
            Message::binary(vec![7u8; size]),
        ] {
            ws.send(msg.clone()).await.expect("send");
            let back = ws.next().await.expect("a reply").expect("ok");
            assert_eq!(back, msg, "size {size}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_over_http1_upgrade() {
    let (_node, port, _inst) = one_app("").await;
    let tcp = tokio::net::TcpStream::connect(local(port))
        .await
        .expect("connect");
    let (mut ws, resp) =
        tokio_tungstenite::client_async_with_config("ws://alpha.test/ws", tcp, Some(ws_config()))
            .await
            .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    echo_messages(&mut ws).await;
    ws.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_over_http2_extended_connect() {
    let (_node, port, _inst) = one_app("").await;
    let mut c = Client::h2c(local(port)).await;
    let mut req = request("CONNECT", "alpha.test", "/ws", true)
        .header("sec-websocket-version", "13")
        .body(anyedge_test_support::http_client::empty())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = c.send(req).await.expect("response");
    assert_eq!(resp.status(), 200, "RFC 8441: the tunnel opens with 200");
    let upgraded = hyper::upgrade::on(resp).await.expect("tunnel");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Client,
        Some(ws_config()),
    )
    .await;
    echo_messages(&mut ws).await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

const HUNDRED_MB: u64 = 100 * 1024 * 1024;

/// A body of `total` bytes made as it is sent.
fn generated(total: u64, trailers: bool) -> ClientBody {
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let stream = futures_util::stream::unfold((total, trailers), move |(left, trailers)| {
        let chunk = chunk.clone();
        async move {
            if left > 0 {
                let n = left.min(chunk.len() as u64);
                Some((
                    Ok(Frame::data(chunk.slice(..n as usize))),
                    (left - n, trailers),
                ))
            } else if trailers {
                let mut t = http::HeaderMap::new();
                t.insert("x-checksum", http::HeaderValue::from_static("done"));
                Some((Ok(Frame::trailers(t)), (0, false)))
            } else {
                None
            }
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Read a body to its end, noting the peak RSS on the way; returns its length.
async fn drain_counting(mut body: hyper::body::Incoming, peak: &mut u64) -> u64 {
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame
            .expect("frame")
            .data_ref()
            .map_or(0, |d| d.len() as u64);
        *peak = (*peak).max(rss_kib());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way_with_flat_memory() {
    let (_node, port, _inst) = one_app("").await;
    let before = rss_kib();
    let mut peak = before;
    for h2 in [false, true] {
        let mut c = Client::plain(local(port), h2).await;
        // Download.
        let resp = c
            .send(
                request("GET", "alpha.test", &format!("/bytes/{HUNDRED_MB}"), h2)
                    .body(anyedge_test_support::http_client::empty())
                    .expect("req"),
            )
            .await
            .expect("resp");
        assert_eq!(
            drain_counting(resp.into_body(), &mut peak).await,
            HUNDRED_MB
        );
        // Upload, echoed back while it is sent.
        let req = request("POST", "alpha.test", "/echo", h2)
            .body(generated(HUNDRED_MB, false))
            .expect("req");
        let resp = c.send(req).await.expect("resp");
        assert_eq!(
            drain_counting(resp.into_body(), &mut peak).await,
            HUNDRED_MB
        );
    }
    let growth_mib = (peak.saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 64,
        "memory grew by {growth_mib} MiB while moving 400 MB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_keep_their_trailers() {
    let (_node, port, _inst) = one_app("").await;
    for h2 in [false, true] {
        let mut c = Client::plain(local(port), h2).await;
        // HTTP/1.1 sends only the trailers that the `Trailer` header announces.
        let req = request("POST", "alpha.test", "/echo", h2)
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .body(generated(200_000, true))
            .expect("req");
        let resp = c.send(req).await.expect("resp");
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        assert_eq!(collected.to_bytes().len(), 200_000, "h2={h2}");
        assert_eq!(
            trailers
                .as_ref()
                .and_then(|t| t.get("x-checksum"))
                .map(|v| v.as_bytes()),
            Some(&b"done"[..]),
            "h2={h2}"
        );
    }
}

async fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(local(port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_are_counted() {
    let (node, port, _inst) = one_app("max_header_size = 4096").await;
    let garbage = raw(port, b"GARBAGE\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8192)
    );
    let too_large = raw(port, big.as_bytes()).await;
    assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large}");
    let no_host = raw(port, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(no_host.contains("anyedge-error: bad_request"), "{no_host}");
    let m = node.metrics().render();
    assert!(
        m.contains("anyedge_node_errors_total{code=\"bad_request\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("anyedge_node_errors_total{code=\"headers_too_large\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_slow_requests_finish() {
    let (_node, port, _inst) = one_app("idle_timeout = \"300ms\"").await;
    // A request slower than the idle timeout still gets its answer.
    let mut c = Client::h1(local(port)).await;
    let (status, _, body) = c.get("alpha.test", "/slow/800").await;
    assert_eq!((status, body.trim()), (200, "alpha"));
    // Then, with nothing moving, the proxy closes the connection.
    let mut s = tokio::net::TcpStream::connect(local(port))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut all))
        .await
        .expect("closed by the proxy in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}
