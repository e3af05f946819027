//! Our HTTP/1.1 server as clients meet it, in raw bytes: `Expect: 100-continue` answered only
//! when the body is wanted, HTTP/1.0 clients (closing by default, keep-alive on request), a
//! large body the proxy does not read still leaves the client its whole answer (lingering
//! close, no reset), a drain closes a keep-alive connection after answering its next request
//! with `Connection: close` or when its idle timeout runs out (never at once: a client would
//! race the close), and the header timeout counts a head that never completes.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_instance::HttpInstance;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn one_app(http: &str) -> (Node, u16, HttpInstance) {
    let inst = HttpInstance::start("alpha", false).await;
    let port = free_port();
    let toml = format!(
        "[http]\n{http}\n[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"alpha-1\"\n  address = \"{}\"\n",
        inst.addr
    );
    let config = anyedge_config::parse(&toml, "h1.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(local(0))).await.expect("node");
    (node, port, inst)
}

/// Read one whole answer (head and a `content-length` body) from `s`.
async fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if !head.starts_with("HTTP/1.1 1") && body.len() >= len {
                return text;
            }
            if head.starts_with("HTTP/1.1 1") {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return text,
        }
    }
}

/// Whether the proxy closed `s` (EOF within `wait`).
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_when_the_body_is_wanted() {
    let (_node, port, _inst) = one_app("").await;
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: alpha.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .expect("write");
    // The 100 comes first; the instance may then answer before it has the body (it echoes it).
    let mut got = answer(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{got}");
    s.write_all(b"hello").await.expect("body");
    let mut buf = [0u8; 4096];
    while !got.ends_with("hello") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    let whole = got.trim_start_matches("HTTP/1.1 100 Continue\r\n\r\n");
    assert!(whole.starts_with("HTTP/1.1 200"), "{got}");
    assert!(whole.ends_with("\r\n\r\nhello"), "{got}");

    // Refused before the body is wanted (no such host): no 100, and the body never sent is
    // not waited for.
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: nobody.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .expect("write");
    let refused = answer(&mut s).await;
    assert!(refused.starts_with("HTTP/1.1 404"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_closes_unless_asked_to_keep_alive() {
    let (_node, port, _inst) = one_app("").await;
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: alpha.test\r\n\r\n")
        .await
        .expect("write");
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.to_ascii_lowercase().contains("connection: close"), "{a}");
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);

    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: alpha.test\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        let a = answer(&mut s).await;
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(
            a.to_ascii_lowercase().contains("connection: keep-alive"),
            "{a}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_large_body_still_leaves_the_client_its_answer() {
    let (_node, port, _inst) = one_app("").await;
    // 8 MiB to a host nobody serves: answered 404 at once, without reading the body. The proxy
    // must not reset the connection under the client's unread answer.
    let s = TcpStream::connect(local(port)).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let big = 8usize << 20;
    let writer = tokio::spawn(async move {
        let head =
            format!("POST /count HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: {big}\r\n\r\n");
        let _ = w.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..big / chunk.len() {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(
        text.contains("unknown_host"),
        "the whole answer arrived: {text}"
    );
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_instance_did_not_read_is_skipped_and_the_connection_goes_on() {
    let (_node, port, _inst) = one_app("").await;
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    // /healthz answers without reading the body: the 5 bytes are already in the proxy's
    // buffer, skipped, and the next request on the connection is served.
    s.write_all(b"POST /healthz HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let a = answer(&mut s).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .expect("write");
    let b = answer(&mut s).await;
    assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    assert!(b.contains("GET /headers"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_keep_alive_connections_after_an_answer_or_their_idle_timeout() {
    let (node, port, _inst) = one_app("idle_timeout = \"1500ms\"").await;
    let get = b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n";
    let mut next = TcpStream::connect(local(port)).await.expect("connect");
    let mut quiet = TcpStream::connect(local(port)).await.expect("connect");
    for s in [&mut next, &mut quiet] {
        s.write_all(get).await.expect("write");
        assert!(answer(s).await.starts_with("HTTP/1.1 200"));
    }
    let mut busy = TcpStream::connect(local(port)).await.expect("connect");
    busy.write_all(b"GET /slow/600 HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drain_started = std::time::Instant::now();
    let stopping = tokio::spawn(async move { node.shutdown(Duration::from_secs(5)).await });
    // Not closed at once: a client sending its next request now would race the close.
    assert!(
        !closed_within(&mut next, Duration::from_millis(300)).await,
        "an idle connection stays open when the drain starts"
    );
    next.write_all(get).await.expect("write");
    let a = answer(&mut next).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.to_ascii_lowercase().contains("connection: close"), "{a}");
    assert!(closed_within(&mut next, Duration::from_secs(2)).await);
    let b = answer(&mut busy).await;
    assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    assert!(b.to_ascii_lowercase().contains("connection: close"), "{b}");
    assert!(closed_within(&mut busy, Duration::from_secs(2)).await);
    // A connection that sends nothing closes when its idle timeout runs out, as it would have
    // without the drain (1.5 s after its answer, which came before the drain).
    assert!(closed_within(&mut quiet, Duration::from_secs(3)).await);
    let waited = drain_started.elapsed();
    assert!(
        waited >= Duration::from_millis(1200),
        "closed after {waited:?}"
    );
    assert_eq!(
        stopping.await.ok(),
        Some(0),
        "every connection closed in the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_never_completes_times_out_and_is_counted() {
    let (node, port, _inst) = one_app("header_read_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: al")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let m = node.metrics().render();
    assert!(
        m.contains("anyedge_node_errors_total{code=\"client_timeout\"} 1"),
        "{m}"
    );
}

/// An instance that answers every request on a connection with `answer`, as bytes.
async fn raw_instance(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(local(0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

/// An instance's fields reach the client as it sent them (names in their case, order kept),
/// less the hop-by-hop ones and those the proxy sets itself (the request id is the proxy's,
/// never the instance's), on keep-alive answers one after another.
#[tokio::test]
async fn instance_fields_pass_as_received_less_hop_by_hop_and_the_proxys_own() {
    let instance = raw_instance(
        b"HTTP/1.1 200 OK\r\nX-Custom-Case: One\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nAnyedge-Request-Id: spoofed\r\nX-Custom-Case: Two\r\nContent-Length: 2\r\nProxy-Connection: keep-alive\r\n\r\nok",
    )
    .await;
    let named = raw_instance(
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let port = free_port();
    let app = |name: &str, addr: SocketAddr| {
        format!("[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"{name}-1\"\n  address = \"{addr}\"\n")
    };
    let toml = format!("{}{}", app("alpha", instance), app("beta", named));
    let config = anyedge_config::parse(&toml, "h1.toml").unwrap_or_else(|d| panic!("{d}"));
    let _node = Node::start(config, Some(local(0))).await.expect("node");
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
            .await
            .expect("write");
        let text = answer(&mut s).await;
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let lines: Vec<&str> = head.lines().collect();
        assert_eq!(lines[0], "HTTP/1.1 200 OK", "{text}");
        let customs: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("X-Custom-Case:"))
            .collect();
        assert_eq!(
            customs,
            [&"X-Custom-Case: One", &"X-Custom-Case: Two"],
            "{text}"
        );
        let lower: Vec<String> = lines.iter().map(|l| l.to_ascii_lowercase()).collect();
        for gone in ["keep-alive:", "connection:", "proxy-connection:"] {
            assert!(
                !lower.iter().any(|l| l.starts_with(gone)),
                "{gone} in {text}"
            );
        }
        let ids: Vec<&String> = lower
            .iter()
            .filter(|l| l.starts_with("anyedge-request-id:"))
            .collect();
        assert_eq!(ids.len(), 1, "{text}");
        assert!(!ids[0].contains("spoofed"), "{text}");
        assert_eq!(
            lower
                .iter()
                .filter(|l| l.starts_with("content-length: 2"))
                .count(),
            1,
            "{text}"
        );
        assert_eq!(
            lower.iter().filter(|l| l.starts_with("date:")).count(),
            1,
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
    }
    s.write_all(b"GET / HTTP/1.1\r\nHost: beta.test\r\n\r\n")
        .await
        .expect("write");
    let text = answer(&mut s).await.to_ascii_lowercase();
    assert!(text.contains("\r\nx-kept: 1\r\n"), "{text}");
    assert!(
        !text.contains("x-secret"),
        "a field Connection names is hop-by-hop: {text}"
    );
}
