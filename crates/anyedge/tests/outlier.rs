//! Passive outlier detection end to end: an in-process node, two instances of one app on
//! loopback, a steady sequence of requests. An instance that accepts connections but never
//! answers is ejected after `consecutive_failures` timeouts and gets no client request after
//! that: the node probes it itself when the ejection ends, and the failed probe ejects it again;
//! one that answers 503 is ejected the same way while the other serves, and comes back through
//! the node's successful probe once it answers again.

use anyedge::node::Node;
use anyedge_test_support::http_client::{empty, request, Client};
use anyedge_test_support::scripted_instance::metric;
use anyedge_test_support::{eventually, free_port};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(20);
const OK: u8 = 0;
const HANG: u8 = 1;
const UNAVAILABLE: u8 = 2;
const RESET: u8 = 3;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A raw HTTP/1.1 instance: counts the request heads it reads (clients' and the node's probes
/// apart), and answers each `200` (with `x-instance`), `503`, or never, as its mode says at
/// the time.
struct RawInstance {
    name: &'static str,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
}

impl RawInstance {
    async fn start(name: &'static str, mode: u8) -> RawInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (mode, requests) = (Arc::new(AtomicU8::new(mode)), Arc::new(AtomicUsize::new(0)));
        let probes = Arc::new(AtomicUsize::new(0));
        let (m, r, p) = (mode.clone(), requests.clone(), probes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counts = Counts {
                    requests: r.clone(),
                    probes: p.clone(),
                };
                tokio::spawn(serve(stream, name, m.clone(), counts));
            }
        });
        RawInstance {
            name,
            addr,
            mode,
            requests,
            probes,
        }
    }

    /// Client requests (not the node's probes).
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The node's own probes (`User-Agent: anyedge-health`).
    fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

struct Counts {
    requests: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
}

/// One connection: bodiless requests, one after another.
async fn serve(mut s: TcpStream, name: &str, mode: Arc<AtomicU8>, counts: Counts) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            match head.contains("user-agent: anyedge-health") {
                true => counts.probes.fetch_add(1, Ordering::SeqCst),
                false => counts.requests.fetch_add(1, Ordering::SeqCst),
            };
            let answer = match mode.load(Ordering::SeqCst) {
                OK => format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-instance: {name}\r\n\r\nok"),
                UNAVAILABLE => format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nx-instance: {name}\r\n\r\n"
                ),
                // Reset: read the request, then close with a TCP reset (no answer).
                RESET => {
                    let _ = s.set_zero_linger();
                    return;
                }
                // Hang: hold the connection, never answer.
                _ => return std::future::pending().await,
            };
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One app of two instances; a short response timeout and the given `outlier` table.
async fn node(port: u16, outlier: &str, instances: [&RawInstance; 2]) -> Node {
    node_with(port, outlier, "", instances).await
}

/// [`node`] with more `[http]` settings.
async fn node_with(port: u16, outlier: &str, http: &str, instances: [&RawInstance; 2]) -> Node {
    let mut toml = format!(
        "[http]\nresponse_timeout = \"300ms\"\n{http}\n[[apps]]\nname = \"app\"\nhostnames = [\"app.test\"]\noutlier = {outlier}\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    for i in instances {
        toml += &format!(
            "  [[apps.instances]]\n  id = \"{}\"\n  address = \"{}\"\n",
            i.name, i.addr
        );
    }
    let config = anyedge_config::parse(&toml, "outlier.toml").unwrap_or_else(|d| panic!("{d}"));
    Node::start(config, Some(local(0)))
        .await
        .expect("node starts")
}

/// One GET on a connection of its own (a timed-out request leaves nothing behind); the status
/// and the instance that answered, if one did.
async fn get(port: u16) -> (u16, Option<String>) {
    send(port, "GET").await
}

/// One bodiless request of `method`, as [`get`].
async fn send(port: u16, method: &str) -> (u16, Option<String>) {
    let mut c = Client::h1(local(port)).await;
    let req = request(method, "app.test", "/", false).body(empty());
    let resp = c.send(req.expect("request")).await.expect("response");
    let status = resp.status().as_u16();
    let who = resp
        .headers()
        .get("x-instance")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    resp.into_body().collect().await.expect("body");
    (status, who)
}

async fn ejections(node: &Node, reason: &str) -> f64 {
    counter(node, "anyedge_outlier_ejections_total", reason).await
}

/// `name{app="app",reason="<reason>"}` from the node's metrics.
async fn counter(node: &Node, name: &str, reason: &str) -> f64 {
    let mut c = Client::h1(node.admin_addr()).await;
    let text = c.get("admin", "/metrics").await.2;
    let series = format!("{name}{{app=\"app\",reason=\"{reason}\"}}");
    metric(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// A request that a failing instance took and did not answer (it hangs past the response
/// timeout, or resets the connection) goes to the other instance when that is safe: an
/// idempotent request, and `[http] retry_on` names the failure (both by default). Ejection is
/// off, so the failing instance keeps being chosen: every GET is answered 200 by the good
/// instance, one retry (reason `timeout` or `reset`) counted per GET that reached the failing
/// one; a POST that reached it gets 504 `upstream_timeout` or 502 `upstream_error` and is not
/// sent again. With `retry_on` naming only the other failure, a GET gets that answer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_failed_after_it_was_sent_goes_elsewhere_only_when_idempotent() {
    for (mode, reason, status) in [(HANG, "timeout", 504), (RESET, "reset", 502)] {
        let other = if reason == "timeout" {
            "reset"
        } else {
            "timeout"
        };
        for retry_on in [reason, other] {
            let good = RawInstance::start("good", OK).await;
            let bad = RawInstance::start("bad", mode).await;
            let port = free_port();
            let http = format!("retry_on = [\"{retry_on}\"]\n");
            let outlier = "{ consecutive_failures = 0 }";
            let node = node_with(port, outlier, &http, [&good, &bad]).await;
            for method in ["GET", "POST"] {
                let case = format!(
                    "{method} to an instance that fails by {reason}, retry_on = [{retry_on}]"
                );
                let (bad_before, good_before) = (bad.requests(), good.requests());
                let retries_before = counter(&node, "anyedge_retries_total", reason).await;
                let (mut ok, mut failed) = (0, 0);
                let deadline = Instant::now() + DEADLINE;
                while bad.requests() < bad_before + 3 {
                    assert!(Instant::now() < deadline, "{case}: no requests reached it");
                    match send(port, method).await {
                        (200, Some(who)) if who == "good" => ok += 1,
                        (s, None) if s == status => failed += 1,
                        other => panic!("{case}: unexpected {other:?}"),
                    }
                }
                let (to_bad, to_good) =
                    (bad.requests() - bad_before, good.requests() - good_before);
                let retried = method == "GET" && retry_on == reason;
                match retried {
                    // Each request that failed on the bad instance was served by the good one.
                    true => assert_eq!((failed, ok), (0, to_good), "{case}"),
                    // Each got its error; the good instance saw only the others.
                    false => assert_eq!((failed, ok), (to_bad, to_good), "{case}"),
                }
                let retries =
                    counter(&node, "anyedge_retries_total", reason).await - retries_before;
                let expected = if retried { to_bad } else { 0 };
                assert_eq!(retries, expected as f64, "{case}: retries");
            }
            node.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// Requests one after another until `bad` has had `n`; every answer is the good instance's
/// `200` or the bad one's failure (`failed`).
async fn until_bad_has(port: u16, bad: &RawInstance, n: usize, failed: u16) {
    eventually("the bad instance to get its requests", DEADLINE, || async {
        let (status, who) = get(port).await;
        assert!(
            status == 200 || status == failed,
            "unexpected {status} from {who:?}"
        );
        (bad.requests() >= n).then_some(())
    })
    .await;
}

/// Requests one after another for `window`: all served by `good`, none reaching `bad`.
async fn only_good_serves(port: u16, good: &RawInstance, bad: &RawInstance, window: Duration) {
    let (before, start) = (bad.requests(), Instant::now());
    let mut served = 0;
    while start.elapsed() < window {
        let (status, who) = get(port).await;
        assert_eq!((status, who.as_deref()), (200, Some(good.name)));
        served += 1;
    }
    assert_eq!(bad.requests(), before, "the ejected instance got requests");
    assert!(served >= 5, "only {served} requests in {window:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_instance_is_ejected_after_its_timeouts_then_probed() {
    let good = RawInstance::start("good", OK).await;
    let hung = RawInstance::start("hung", HANG).await;
    let port = free_port();
    let outlier = r#"{ consecutive_failures = 3, base_ejection = "3s", max_ejection = "10s" }"#;
    let node = node(port, outlier, [&good, &hung]).await;

    until_bad_has(port, &hung, 3, 504).await;
    assert_eq!(hung.requests(), 3, "requests go one at a time");
    assert_eq!(ejections(&node, "timeout").await, 1.0);
    // Ejected for 3 s from its third timeout: nothing reaches it for (well within) that time.
    only_good_serves(port, &good, &hung, Duration::from_millis(1500)).await;

    // When the ejection ends the node probes it itself (no client request is the probe); the
    // probe times out and the instance is out again at once (for 6 s). Client requests all go
    // to the good instance meanwhile.
    let probed = async {
        eventually("the failed probe to eject it again", DEADLINE, || async {
            (ejections(&node, "probe").await == 1.0).then_some(())
        })
        .await
    };
    let serving = only_good_serves(port, &good, &hung, Duration::from_secs(4));
    tokio::join!(probed, serving);
    assert_eq!(hung.probes(), 1, "one probe");
    assert_eq!(hung.requests(), 3, "no client request after the ejection");
    assert_eq!(ejections(&node, "timeout").await, 1.0);
    assert_eq!(ejections(&node, "gateway_error").await, 0.0);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_503_is_ejected_and_returns_after_a_good_probe() {
    let good = RawInstance::start("good", OK).await;
    let bad = RawInstance::start("bad", UNAVAILABLE).await;
    let port = free_port();
    let outlier = r#"{ consecutive_failures = 3, base_ejection = "2s" }"#;
    let node = node(port, outlier, [&good, &bad]).await;

    until_bad_has(port, &bad, 3, 503).await;
    assert_eq!(bad.requests(), 3);
    assert_eq!(ejections(&node, "gateway_error").await, 1.0);
    only_good_serves(port, &good, &bad, Duration::from_millis(1000)).await;

    // It recovers: once the ejection ends, the node's probe succeeds and it serves again.
    bad.set_mode(OK);
    eventually(
        "the recovered instance to serve again",
        DEADLINE,
        || async {
            let (status, who) = get(port).await;
            assert_eq!(status, 200);
            (who.as_deref() == Some(bad.name) && bad.requests() >= 4).then_some(())
        },
    )
    .await;
    assert!(bad.probes() >= 1, "it came back through the node's probe");
    assert_eq!(ejections(&node, "gateway_error").await, 1.0, "never again");
    node.shutdown(Duration::from_secs(1)).await;
}
