//! Backhaul end to end with real processes on loopback: an edge-only node and worker-only
//! nodes configured by file (`[[nodes]]`, instances naming their node), mutual TLS from a
//! cluster CA made by the same code as `anyedge certs`. HTTP/1.1, WebSocket and raw TCP reach
//! instances that only the workers can see; refusals by the worker are placed elsewhere;
//! nodes without a cluster certificate cannot use a worker's backhaul.

use anyedge_test_support::cluster::{get, local, metric, tcp_echo, Node, Pki};
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::ClientBody;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::instances::FakeInstance;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

/// App `hello` (`hello.test` on a fresh port, its service's extra lines `service_extra`) with
/// one instance `real` at `inst`, run by worker `w1` and reached from edge `edge1` over
/// backhaul; `edge_extra` goes into the edge's config before its cluster section. Both nodes
/// are up and the app answers through the edge: `(worker, edge, http_port)`.
async fn hello_on_a_worker(
    pki: &Pki,
    inst: std::net::SocketAddr,
    service_extra: &str,
    edge_extra: &str,
) -> (Node, Node, u16) {
    let (http_port, backhaul) = (free_port(), free_port());
    let app = format!(
        "[[apps]]\nname = \"hello\"\nhostnames = [\"hello.test\"]\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {http_port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n{service_extra}"
    );
    let worker = Node::start(bin(), "w1", &format!(
        "[node]\nid = \"w1\"\nroles = [\"worker\"]\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\ndrain_timeout = \"1s\"\n{}{app}[[apps.instances]]\nid = \"real\"\naddress = \"{inst}\"\n",
        pki.cluster_section("w1"),
    ));
    let edge = Node::start(bin(), "edge1", &format!(
        "[node]\nid = \"edge1\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{edge_extra}{}[[nodes]]\nid = \"w1\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{app}[[apps.instances]]\nid = \"real\"\naddress = \"{inst}\"\nnode = \"w1\"\n",
        pki.cluster_section("edge1"),
    ));
    worker.up().await;
    edge.up().await;
    // The first request opens the backhaul (and with it the load feed).
    anyedge_test_support::eventually("routable", Duration::from_secs(10), || async {
        get(local(http_port), "hello.test", "/")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    (worker, edge, http_port)
}

const APP: &str = r#"
[[apps]]
name = "hello"
hostnames = ["hello.test"]
[[apps.services]]
internal_port = 1
ports = [ { port = HTTP_PORT, bind = "127.0.0.1", handlers = ["http"] } ]
[[apps]]
name = "echo"
[[apps.services]]
internal_port = 1
ports = [ { port = TCP_PORT, bind = "127.0.0.1" } ]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_websocket_and_tcp_reach_a_worker_over_backhaul() {
    let pki = Pki::new();
    let inst = HttpInstance::start("hello-on-worker", false).await;
    let echo = FakeInstance::echo("echo-on-worker").await;
    let (http_port, tcp_port, backhaul) = (free_port(), free_port(), free_port());
    let app = APP
        .replace("HTTP_PORT", &http_port.to_string())
        .replace("TCP_PORT", &tcp_port.to_string());
    let worker = Node::start(bin(), "w1", &format!(
        "[node]\nid = \"w1\"\nregion = \"near\"\nroles = [\"worker\"]\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\ndrain_timeout = \"1s\"\n{}{app}[[apps.instances]]\nid = \"w1-echo\"\naddress = \"{}\"\n",
        pki.cluster_section("w1"),
        echo.addr,
    ).replace("[[apps]]\nname = \"echo\"", &format!("[[apps.instances]]\nid = \"w1-hello\"\naddress = \"{}\"\n[[apps]]\nname = \"echo\"", inst.addr)));
    let edge = Node::start(bin(), "edge1", &format!(
        "[node]\nid = \"edge1\"\nregion = \"near\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[[nodes]]\nid = \"w1\"\nregion = \"near\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{app}[[apps.instances]]\nid = \"w1-echo\"\naddress = \"{}\"\nnode = \"w1\"\n",
        pki.cluster_section("edge1"),
        echo.addr,
    ).replace("[[apps]]\nname = \"echo\"", &format!("[[apps.instances]]\nid = \"w1-hello\"\naddress = \"{}\"\nnode = \"w1\"\n[[apps]]\nname = \"echo\"", inst.addr)));
    worker.up().await;
    edge.up().await;

    // HTTP/1.1 through the edge, over HTTP/2 backhaul, restored to HTTP/1.1 at the worker.
    let (status, body) = anyedge_test_support::eventually(
        "request through backhaul",
        Duration::from_secs(10),
        || async {
            get(local(http_port), "hello.test", "/headers")
                .await
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.starts_with("GET /headers HTTP/1.1"), "{body}");
    assert!(body.contains("host: hello.test"), "{body}");
    assert!(
        !body.contains("anyedge-backhaul"),
        "metadata must not reach the instance: {body}"
    );
    // The forwarding headers, written by the worker from the edge's one client header, are
    // those an instance on the edge's own node gets: each once, about the client and the edge.
    let lines: Vec<&str> = body.lines().collect();
    let values = |name: &str| -> Vec<&str> {
        let prefix = format!("{name}: ");
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    };
    let port = http_port.to_string();
    for (name, want) in [
        ("x-forwarded-for", "127.0.0.1"),
        ("anyedge-client-ip", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-ssl", "off"),
        ("x-forwarded-port", port.as_str()),
        ("anyedge-forwarded-port", port.as_str()),
        ("via", "1.1 anyedge"),
        ("anyedge-region", "near"),
    ] {
        assert_eq!(values(name), [want], "{name}:\n{body}");
    }
    let ids = values("anyedge-request-id");
    assert!(
        ids.len() == 1 && ids[0].ends_with("-near"),
        "one request id from the edge:\n{body}"
    );
    let streams = metric(&worker.metrics().await, "anyedge_backhaul_streams_total");
    assert!(streams >= 1.0, "worker streams: {streams}");

    // Raw TCP over its own TLS connection.
    let mut c = tcp_echo(local(tcp_port), "echo-on-worker\n", "ping over backhaul\n").await;
    // Half-close: the client's FIN reaches the instance, whose close comes back.
    c.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read to end");
    assert!(rest.is_empty());
    drop(c);

    let m = edge.metrics().await;
    assert!(
        metric(&m, "anyedge_backhaul_connections{kind=\"h2\"}") >= 1.0,
        "{m}"
    );
}

/// A WebSocket whose first choice the worker refuses (the edge's catalog names an instance the
/// worker does not run) is placed again and switches on another instance; the client sees
/// only its 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_switch_the_worker_refuses_is_placed_again() {
    let pki = Pki::new();
    let inst = HttpInstance::start("real", false).await;
    let (http_port, backhaul) = (free_port(), free_port());
    let app = format!(
        "[[apps]]\nname = \"hello\"\nhostnames = [\"hello.test\"]\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {http_port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    let worker = Node::start(bin(), "w1", &format!(
        "[node]\nid = \"w1\"\nroles = [\"worker\"]\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\ndrain_timeout = \"1s\"\n{}{app}[[apps.instances]]\nid = \"real\"\naddress = \"{}\"\n",
        pki.cluster_section("w1"),
        inst.addr,
    ));
    let edge = Node::start(bin(), "edge1", &format!(
        "[node]\nid = \"edge1\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[[nodes]]\nid = \"w1\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{app}[[apps.instances]]\nid = \"real\"\naddress = \"{}\"\nnode = \"w1\"\n[[apps.instances]]\nid = \"ghost\"\naddress = \"{}\"\nnode = \"w1\"\n",
        pki.cluster_section("edge1"),
        inst.addr,
        inst.addr,
    ));
    worker.up().await;
    edge.up().await;
    use futures_util::{SinkExt, StreamExt};
    let url = format!("ws://127.0.0.1:{http_port}/ws");
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    let h = req.headers_mut();
    h.insert("host", http::HeaderValue::from_static("hello.test"));
    h.insert(
        "anyedge-prefer-instance-id",
        http::HeaderValue::from_static("ghost"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket");
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("again"))
        .await
        .expect("send");
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("not an error");
    assert_eq!(back.into_text().expect("text").as_str(), "again");
    let m = edge.metrics().await;
    let retried = metric(
        &m,
        "anyedge_retries_total{app=\"hello\",reason=\"worker_refused\"}",
    );
    assert!(retried >= 1.0, "{m}");
    let refused = metric(
        &worker.metrics().await,
        "anyedge_backhaul_refused_total{reason=\"unknown_instance\"}",
    );
    assert!(refused >= 1.0);
}

/// The load feed end to end: an edge does not check instances on other nodes, so it learns
/// that one turned unhealthy (and healthy again) only from its worker's feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_health_verdict_reaches_the_edge_over_the_load_feed() {
    let pki = Pki::new();
    let inst = HttpInstance::start("checked", false).await;
    let checks = "checks = [ { type = \"http\", path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", grace_period = \"0s\", unhealthy_threshold = 1, healthy_threshold = 1 } ]\n";
    let (_worker, edge, http_port) = hello_on_a_worker(&pki, inst.addr, checks, "").await;
    let healthy = "anyedge_instance_healthy{app=\"hello\",instance=\"real\"}";
    inst.set_health(503);
    anyedge_test_support::eventually("edge sees it unhealthy", Duration::from_secs(5), || async {
        (metric(&edge.metrics().await, healthy) == 0.0).then_some(())
    })
    .await;
    let (status, _) = get(local(http_port), "hello.test", "/")
        .await
        .expect("answer");
    assert_eq!(status, 503, "no healthy instance is left");
    assert!(inst.health_checks() > 0, "the worker checks it");
    inst.set_health(200);
    anyedge_test_support::eventually(
        "edge sees it healthy again",
        Duration::from_secs(5),
        || async { (metric(&edge.metrics().await, healthy) == 1.0).then_some(()) },
    )
    .await;
}

/// Raw TCP through backhaul is bounded on the worker as on any node by the app's
/// `limits.max_connections` and the instance's `hard_limit`, not by `max_inflight` (HTTP
/// requests): five connections held open at once all reach the instance with `max_inflight = 2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_through_backhaul_is_bounded_by_connections_not_requests() {
    let pki = Pki::new();
    let echo = FakeInstance::echo("echo-on-worker").await;
    let (http_port, tcp_port, backhaul) = (free_port(), free_port(), free_port());
    let app = APP
        .replace("HTTP_PORT", &http_port.to_string())
        .replace("TCP_PORT", &tcp_port.to_string())
        .replace(
            "name = \"echo\"\n",
            "name = \"echo\"\nlimits = { max_inflight = 2 }\n",
        );
    let worker = Node::start(bin(), "w1", &format!(
        "[node]\nid = \"w1\"\nregion = \"near\"\nroles = [\"worker\"]\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\ndrain_timeout = \"1s\"\n{}{app}[[apps.instances]]\nid = \"w1-echo\"\naddress = \"{}\"\n",
        pki.cluster_section("w1"),
        echo.addr,
    ));
    let edge = Node::start(bin(), "edge1", &format!(
        "[node]\nid = \"edge1\"\nregion = \"near\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[[nodes]]\nid = \"w1\"\nregion = \"near\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{app}[[apps.instances]]\nid = \"w1-echo\"\naddress = \"{}\"\nnode = \"w1\"\n",
        pki.cluster_section("edge1"),
        echo.addr,
    ));
    worker.up().await;
    edge.up().await;
    let mut open = Vec::new();
    for i in 0..5 {
        open.push(
            tcp_echo(
                local(tcp_port),
                "echo-on-worker\n",
                &format!("connection {i}\n"),
            )
            .await,
        );
    }
    assert_eq!(echo.accepted(), 5);
    // The refusal counter has a series per reason: none may have counted.
    let m = worker.metrics().await;
    let refused: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("anyedge_backhaul_refused_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "the worker refused: {refused:?}");
}

/// A process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `total` bytes that count up (so a lost, doubled or reordered chunk shows), made as they are
/// sent, in 60,000-byte chunks (not a multiple of any frame or window size); then trailers.
fn counting_body(total: usize, trailers: bool) -> ClientBody {
    use http_body_util::{BodyExt, StreamBody};
    const CHUNK: usize = 60_000;
    let stream =
        futures_util::stream::unfold((0usize, trailers), move |(sent, trailers)| async move {
            if sent < total {
                let n = CHUNK.min(total - sent);
                let chunk: Vec<u8> = (sent..sent + n).map(|i| (i % 251) as u8).collect();
                let frame = hyper::body::Frame::data(bytes::Bytes::from(chunk));
                Some((Ok(frame), (sent + n, trailers)))
            } else if trailers {
                let mut t = http::HeaderMap::new();
                t.insert("x-checksum", http::HeaderValue::from_static("done"));
                Some((Ok(hyper::body::Frame::trailers(t)), (sent, false)))
            } else {
                None
            }
        });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Request and response bodies through backhaul, from HTTP/1.1 and HTTP/2 clients: 48 MiB echoed
/// back while it is still being sent (so both directions' flow control is exercised at once) and
/// 48 MiB downloaded arrive whole and in order, with the edge's and worker's memory staying flat;
/// trailers cross; a body over the edge's `max_request_body`, sent to an instance that answers only
/// after reading it all, is refused 413 as it streams, and the backhaul connection serves the next
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_trailers_cross_backhaul_whole() {
    use anyedge_test_support::http_client::{empty, request, Client};
    use http_body_util::BodyExt;
    const BIG: usize = 48 * 1024 * 1024;
    const LIMIT: usize = 64 * 1024 * 1024;
    let pki = Pki::new();
    let inst = HttpInstance::start("bodies", false).await;
    let limit = format!("[http]\nmax_request_body = {LIMIT}\n");
    let (worker, edge, http_port) = hello_on_a_worker(&pki, inst.addr, "", &limit).await;
    let before = rss_kib(edge.pid()) + rss_kib(worker.pid());
    let mut peak = before;
    for h2 in [false, true] {
        let mut c = Client::plain(local(http_port), h2).await;
        // Echoed while it is sent: every byte back, in order.
        let req = request("POST", "hello.test", "/echo", h2)
            .body(counting_body(BIG, false))
            .expect("request");
        let resp = c.send(req).await.expect("response");
        assert_eq!(resp.status(), 200, "h2={h2}");
        let mut body = resp.into_body();
        let mut got = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            if let Some(d) = frame.data_ref() {
                for (i, b) in d.iter().enumerate() {
                    assert_eq!(*b, ((got + i) % 251) as u8, "byte {} (h2={h2})", got + i);
                }
                got += d.len();
                peak = peak.max(rss_kib(edge.pid()) + rss_kib(worker.pid()));
            }
        }
        assert_eq!(got, BIG, "h2={h2}");
        // Downloaded.
        let req = request("GET", "hello.test", &format!("/bytes/{BIG}"), h2)
            .body(empty())
            .expect("request");
        let resp = c.send(req).await.expect("response");
        let mut body = resp.into_body();
        let mut got = 0usize;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.expect("frame").data_ref() {
                assert!(d.iter().all(|b| *b == b'z'));
                got += d.len();
                peak = peak.max(rss_kib(edge.pid()) + rss_kib(worker.pid()));
            }
        }
        assert_eq!(got, BIG, "h2={h2}");
        // Trailers (HTTP/1.1 sends only announced ones).
        let req = request("POST", "hello.test", "/echo", h2)
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .body(counting_body(200_000, true))
            .expect("request");
        let resp = c.send(req).await.expect("response");
        let collected = resp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        assert_eq!(collected.to_bytes().len(), 200_000, "h2={h2}");
        let checksum = trailers.as_ref().and_then(|t| t.get("x-checksum"));
        assert_eq!(
            checksum.map(|v| v.as_bytes()),
            Some(&b"done"[..]),
            "h2={h2}"
        );
    }
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 48,
        "edge and worker grew by {growth_mib} MiB while 192 MiB crossed"
    );
    // Over the limit, with no length announced: refused while it streams.
    let mut c = Client::h2c(local(http_port)).await;
    let req = request("POST", "hello.test", "/count", true)
        .body(counting_body(LIMIT + 1_000_000, false))
        .expect("request");
    let status = match c.send(req).await {
        Ok(resp) => resp.status().as_u16(),
        Err(e) => panic!("the edge should answer 413, got {e}"),
    };
    assert_eq!(status, 413);
    let (s, body) = get(local(http_port), "hello.test", "/")
        .await
        .expect("answer");
    assert_eq!((s, body.trim()), (200, "bodies"));
    // The refused stream was reset, not its connection: all of this took the connections the
    // edge keeps to one worker, no more.
    let m = edge.metrics().await;
    let opened = metric(&m, "anyedge_backhaul_connections_opened_total");
    assert!(
        (1.0..=2.0).contains(&opened),
        "{opened} backhaul connections opened"
    );
}

/// Data a client has not taken yet (a download it stopped reading), or an instance has not taken
/// yet (an upload it does not read), waits on its backhaul stream and counts against the
/// connection's HTTP/2 window as well. Ten stalled downloads and ten stalled uploads (more than
/// two connections' worth each, were a connection's window no larger than a stream's) must not
/// stall other requests to the same worker, with or without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_transfers_do_not_stall_other_requests_on_the_backhaul() {
    use anyedge_test_support::http_client::{full, request, Client};
    use http_body_util::BodyExt;
    let pki = Pki::new();
    let inst = HttpInstance::start("quick", false).await;
    let (_worker, _edge, http_port) = hello_on_a_worker(&pki, inst.addr, "", "").await;
    // Ten downloads of 256 MiB whose clients read the response head and then nothing.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(local(http_port))
            .await
            .expect("connect");
        s.write_all(b"GET /bytes/268435456 HTTP/1.1\r\nHost: hello.test\r\n\r\n")
            .await
            .expect("request");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.expect("response head");
        assert_eq!(&head, b"HTTP/1.1 200");
        stalled.push(s);
    }
    // Ten uploads of 256 MiB to a path where the instance never reads the body; each client
    // writes until nothing more is taken.
    let mut uploads = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(local(http_port))
            .await
            .expect("connect");
        uploads.push(tokio::spawn(async move {
            let head =
                "POST /reset HTTP/1.1\r\nHost: hello.test\r\nContent-Length: 268435456\r\n\r\n";
            let chunk = vec![b'u'; 64 * 1024];
            if s.write_all(head.as_bytes()).await.is_ok() {
                while s.write_all(&chunk).await.is_ok() {}
            }
        }));
    }
    // Steady requests, with and without a body, for a few seconds while the stalled streams fill
    // every buffer they can (the sockets', then their windows): each must be answered promptly.
    let started = std::time::Instant::now();
    let mut answered = 0;
    while answered < 20 || started.elapsed() < Duration::from_secs(3) {
        let answer = tokio::time::timeout(Duration::from_secs(3), async {
            let mut c = Client::h1(local(http_port)).await;
            let req = request("POST", "hello.test", "/echo", false)
                .body(full(&b"small body"[..]))
                .expect("request");
            let resp = c.send(req).await.expect("response");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let plain = get(local(http_port), "hello.test", "/").await;
            (status, body, plain)
        })
        .await;
        let (status, body, plain) =
            answer.unwrap_or_else(|_| panic!("request {answered} stalled behind the transfers"));
        assert_eq!((status, &body[..]), (200, &b"small body"[..]));
        let (s, text) = plain.expect("answer");
        assert_eq!((s, text.trim()), (200, "quick"));
        answered += 1;
    }
    drop(stalled);
    for u in uploads {
        u.abort();
    }
}

/// A request as raw HTTP/1.0 (the connection closes after it): (status, head).
async fn send_raw(port: u16, method: &str, extra: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(local(port))
        .await
        .expect("connect");
    let req =
        format!("{method} / HTTP/1.0\r\nHost: hello.test\r\nContent-Length: 0\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    (status, head)
}

/// A hung instance on a worker: the worker times it out (its `response_timeout`) and says so
/// to the edge, which sends an idempotent request to another instance and answers anything
/// else with its own 504 `upstream_timeout`. The worker's marker never reaches the client,
/// and the worker, which owns the instance, counts the timeout for outlier detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timed_out_by_the_worker_goes_elsewhere_when_idempotent() {
    let pki = Pki::new();
    let real = HttpInstance::start("real", false).await;
    // Accepts and reads, never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let (http_port, backhaul) = (free_port(), free_port());
    let app = format!(
        "[[apps]]\nname = \"hello\"\nhostnames = [\"hello.test\"]\noutlier = {{ consecutive_failures = 3 }}\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {http_port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    let http = "[http]\nresponse_timeout = \"300ms\"\n";
    let instances = |node: &str| {
        format!(
            "[[apps.instances]]\nid = \"real\"\naddress = \"{}\"\n{node}[[apps.instances]]\nid = \"hung\"\naddress = \"{hung_addr}\"\n{node}",
            real.addr
        )
    };
    let worker = Node::start(bin(), "w1", &format!(
        "[node]\nid = \"w1\"\nroles = [\"worker\"]\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\ndrain_timeout = \"1s\"\n{http}{}{app}{}",
        pki.cluster_section("w1"),
        instances(""),
    ));
    let edge = Node::start(bin(), "edge1", &format!(
        "[node]\nid = \"edge1\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{http}{}[[nodes]]\nid = \"w1\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{app}{}",
        pki.cluster_section("edge1"),
        instances("node = \"w1\"\n"),
    ));
    worker.up().await;
    edge.up().await;
    anyedge_test_support::eventually("routable", Duration::from_secs(10), || async {
        get(local(http_port), "hello.test", "/")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    let to_hung = "anyedge-prefer-instance-id: hung\r\n";
    // The POST first: its timeout is the worker's first of three in a row that eject.
    let (status, head) = send_raw(http_port, "POST", to_hung).await;
    assert_eq!(status, 504, "{head}");
    assert!(head.contains("anyedge-error: upstream_timeout"), "{head}");
    assert!(!head.contains("anyedge-backhaul-failed"), "{head}");
    for n in 0..3 {
        let (status, head) = send_raw(http_port, "GET", to_hung).await;
        assert_eq!(status, 200, "GET {n}: {head}");
        assert!(!head.contains("anyedge-backhaul-failed"), "{head}");
    }
    // The third GET may find the instance ejected already (the worker's load feed).
    let retried = metric(
        &edge.metrics().await,
        "anyedge_retries_total{app=\"hello\",reason=\"timeout\"}",
    );
    assert!((2.0..=3.0).contains(&retried), "{retried} retries");
    let ejected = metric(
        &worker.metrics().await,
        "anyedge_outlier_ejections_total{app=\"hello\",reason=\"timeout\"}",
    );
    assert_eq!(ejected, 1.0, "the worker ejects its hung instance");
}
