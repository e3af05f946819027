//! Traffic policy end to end (issue 20): access rules on HTTP, TLS and raw TCP ports for IPv4
//! and IPv6 clients (127.0.0.x and ::1 source addresses), rate limits (a flooding client
//! gets 429s while another client of the app and a client of another app are served on
//! time), and the retry budget (with every instance refusing, the retries made stay within
//! it). One in-process node each, real clients and instances on loopback.

use anyedge::node::Node;
use anyedge_test_support::client::{connect_from, echo};
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::instances::FakeInstance;
use anyedge_test_support::pki::Pki;
use anyedge_test_support::scripted_instance::metric;
use anyedge_test_support::{eventually, free_port};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);
const TOKEN: &str = "policy-secret";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn token_sha() -> String {
    Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node's address for a client at `src` (the same family).
fn to(src: IpAddr, port: u16) -> SocketAddr {
    match src {
        IpAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], port)),
        IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    }
}

/// A parsed answer: status, header block (lower-case), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then_some(v.trim())
        })
    }
}

/// Read one response (Content-Length framed) from `s`.
async fn read_answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < length {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One GET from source address `src` on a connection of its own, with `extra` header lines.
async fn get_from(src: IpAddr, port: u16, host: &str, extra: &str) -> Answer {
    let mut s = connect_from(src, to(src, port)).await.expect("connect");
    let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    tokio::time::timeout(DEADLINE, read_answer(&mut s))
        .await
        .expect("answer in time")
        .expect("answer")
}

/// A TLS handshake for `sni` from `src`; `Err` when the node closed the connection.
async fn tls_from(
    pki: &Pki,
    src: IpAddr,
    port: u16,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(src, to(src, port)).await?;
    let name = ServerName::try_from(sni.to_string()).expect("name");
    let connector = tokio_rustls::TlsConnector::from(pki.client(&[b"http/1.1"]));
    tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .expect("handshake ends in time")
}

/// Whether a raw TCP connection from `src` is carried to the echo instance.
async fn tcp_echoes(src: IpAddr, port: u16) -> bool {
    let Ok(mut s) = connect_from(src, to(src, port)).await else {
        return false;
    };
    matches!(echo(&mut s, b"ping").await, Ok(b) if b == b"ping")
}

fn series(text: &str, s: &str) -> f64 {
    metric(text, s).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_refuse_on_http_tls_and_tcp_ports_for_ipv4_and_ipv6() {
    let pki = Pki::new();
    pki.issue("guarded", &["guarded.test"]);
    let (guarded, open, v6) = (
        HttpInstance::start("guarded", false).await,
        HttpInstance::start("open", false).await,
        HttpInstance::start("v6", false).await,
    );
    let tcp = FakeInstance::echo("").await;
    let (http_port, tls_port, tcp_port) = (free_port(), free_port(), free_port());
    let sha = token_sha();
    let toml = format!(
        r#"
[[apps]]
name = "guarded"
hostnames = ["guarded.test"]
tokens_sha256 = ["{sha}"]
access = {{ allow = ["127.0.0.0/8", "::1"], deny = ["127.0.0.2"] }}
  [[apps.services]]
  ports = [ {{ port = {http_port}, handlers = ["http"] }}, {{ port = {tls_port}, handlers = ["tls", "http"] }} ]
  [[apps.certificates]]
  cert = "guarded.pem"
  key = "guarded-key.pem"
  [[apps.instances]]
  id = "guarded-1"
  address = "{}"

[[apps]]
name = "open"
hostnames = ["open.test"]
  [[apps.services]]
  ports = [ {{ port = {http_port}, handlers = ["http"] }} ]
  [[apps.instances]]
  id = "open-1"
  address = "{}"

[[apps]]
name = "v6"
hostnames = ["v6.test"]
access = {{ allow = ["::1/128"] }}
  [[apps.services]]
  ports = [ {{ port = {http_port}, handlers = ["http"] }} ]
  [[apps.instances]]
  id = "v6-1"
  address = "{}"

[[apps]]
name = "tcp"
  [[apps.services]]
  access = {{ deny = ["127.0.0.3/32", "::1/128"] }}
  ports = [ {{ port = {tcp_port} }} ]
  [[apps.instances]]
  id = "tcp-1"
  address = "{}"
"#,
        guarded.addr, open.addr, v6.addr, tcp.addr
    );
    let config = anyedge_config::parse_with_base(&toml, "policy.toml", Some(pki.path()))
        .unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("node starts");
    let (one, two, three, six) = (ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3"), ip("::1"));

    // HTTP: the deny block wins over the allow block; IPv6 is allowed by its own block.
    assert_eq!(
        get_from(one, http_port, "guarded.test", "").await.status,
        200
    );
    assert_eq!(
        get_from(six, http_port, "guarded.test", "").await.status,
        200
    );
    let denied = get_from(two, http_port, "guarded.test", "").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("anyedge-error"), Some("access_denied"));
    assert!(
        denied.body.starts_with("access_denied: "),
        "{}",
        denied.body
    );
    assert!(
        denied.header("anyedge-request-id").is_some(),
        "{}",
        denied.head
    );
    // Another app on the same port has rules of its own (none).
    assert_eq!(get_from(two, http_port, "open.test", "").await.status, 200);
    // An allow list alone: IPv4 is in none of its blocks.
    let v4 = get_from(one, http_port, "v6.test", "").await;
    assert_eq!(v4.status, 403);
    assert_eq!(get_from(six, http_port, "v6.test", "").await.status, 200);
    assert_eq!(
        guarded.requests(),
        2,
        "no denied request reached the instance"
    );

    // The route trace says why, for a valid token only.
    let ask = format!("anyedge-debug: route\r\nanyedge-debug-token: {TOKEN}\r\n");
    let traced = get_from(two, http_port, "guarded.test", &ask).await;
    assert_eq!(traced.status, 403);
    assert_eq!(
        traced.header("anyedge-route"),
        Some("refused=access_denied; rule=deny 127.0.0.2/32")
    );
    let wrong = "anyedge-debug: route\r\nanyedge-debug-token: nope\r\n";
    let untraced = get_from(two, http_port, "guarded.test", wrong).await;
    assert_eq!(untraced.header("anyedge-route"), None);

    // TLS: refused before the handshake; allowed clients get their answer over TLS.
    assert!(tls_from(&pki, two, tls_port, "guarded.test").await.is_err());
    for src in [one, six] {
        let mut tls = tls_from(&pki, src, tls_port, "guarded.test")
            .await
            .expect("handshake");
        tls.write_all(b"GET / HTTP/1.1\r\nhost: guarded.test\r\n\r\n")
            .await
            .expect("write");
        let a = read_answer(&mut tls).await.expect("answer");
        assert_eq!(a.status, 200, "{src}");
    }

    // Raw TCP: the service's rules, closed at accept; the instance never sees the client.
    assert!(tcp_echoes(one, tcp_port).await);
    assert!(!tcp_echoes(three, tcp_port).await);
    assert!(!tcp_echoes(six, tcp_port).await);
    assert_eq!(tcp.accepted(), 1);

    let text = node.metrics().render();
    for (s, want) in [
        (
            r#"anyedge_access_denied_total{app="guarded",rule="deny 127.0.0.2/32"}"#,
            4.0,
        ),
        (
            r#"anyedge_access_denied_total{app="v6",rule="not_allowed"}"#,
            1.0,
        ),
        (
            r#"anyedge_access_denied_total{app="tcp",rule="deny 127.0.0.3/32"}"#,
            1.0,
        ),
        (
            r#"anyedge_access_denied_total{app="tcp",rule="deny ::1/128"}"#,
            1.0,
        ),
        (
            r#"anyedge_errors_total{app="guarded",code="access_denied"}"#,
            4.0,
        ),
        (
            r#"anyedge_errors_total{app="tcp",code="access_denied"}"#,
            2.0,
        ),
    ] {
        assert_eq!(series(&text, s), want, "{s} in\n{text}");
    }
    drop(node);
}

/// Requests on one kept-alive connection from `src` at `per_second` for `length`: the
/// statuses and latencies seen.
async fn steady(
    src: IpAddr,
    port: u16,
    host: &'static str,
    per_second: u32,
    length: Duration,
) -> (Vec<u16>, Vec<Duration>, Vec<Answer>) {
    let mut s = connect_from(src, to(src, port)).await.expect("connect");
    let (mut statuses, mut latencies, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    let gap = Duration::from_secs(1) / per_second;
    let start = tokio::time::Instant::now();
    let mut next = start;
    while next < start + length {
        tokio::time::sleep_until(next).await;
        next += gap;
        let sent = Instant::now();
        let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            statuses.push(0);
            continue;
        }
        match read_answer(&mut s).await {
            Ok(a) => {
                latencies.push(sent.elapsed());
                statuses.push(a.status);
                if a.status != 200 && refused.len() < 3 {
                    refused.push(a);
                }
            }
            Err(_) => statuses.push(0),
        }
    }
    (statuses, latencies, refused)
}

fn p99(mut l: Vec<Duration>) -> Duration {
    l.sort();
    l.get(l.len() * 99 / 100).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_limited_while_others_are_served_on_time() {
    let (limited, other) = (
        HttpInstance::start("limited", false).await,
        HttpInstance::start("other", false).await,
    );
    let tcp = FakeInstance::echo("").await;
    let (port, tcp_port) = (free_port(), free_port());
    let toml = format!(
        r#"
[[apps]]
name = "limited"
hostnames = ["limited.test"]
rate_limit = {{ per_client = 40, burst = 40 }}
  [[apps.services]]
  ports = [ {{ port = {port}, handlers = ["http"] }} ]
  [[apps.instances]]
  id = "limited-1"
  address = "{}"

[[apps]]
name = "other"
hostnames = ["other.test"]
  [[apps.services]]
  ports = [ {{ port = {port}, handlers = ["http"] }} ]
  [[apps.instances]]
  id = "other-1"
  address = "{}"

[[apps]]
name = "capped"
hostnames = ["capped.test"]
rate_limit = {{ total = 10 }}
  [[apps.services]]
  ports = [ {{ port = {port}, handlers = ["http"] }} ]
  [[apps.instances]]
  id = "capped-1"
  address = "{}"

[[apps]]
name = "tcp"
rate_limit = {{ per_client = 3 }}
  [[apps.services]]
  ports = [ {{ port = {tcp_port} }} ]
  [[apps.instances]]
  id = "tcp-1"
  address = "{}"
"#,
        limited.addr, other.addr, other.addr, tcp.addr
    );
    let config = anyedge_config::parse(&toml, "policy.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("node starts");

    // 127.0.0.2 floods at 10x its limit (400/s on four connections) for 2 s; 127.0.0.3 (the
    // same app) and ::1 (another app) send at 20/s meanwhile.
    let secs = Duration::from_secs(2);
    let flood: Vec<_> = (0..4)
        .map(|_| tokio::spawn(steady(ip("127.0.0.2"), port, "limited.test", 100, secs)))
        .collect();
    let calm = tokio::spawn(steady(ip("127.0.0.3"), port, "limited.test", 20, secs));
    let elsewhere = tokio::spawn(steady(ip("::1"), port, "other.test", 20, secs));
    let (mut ok, mut limited_count, mut other_status) = (0, 0, 0);
    let mut sample = None;
    for f in flood {
        let (statuses, _, refused) = f.await.expect("flood");
        for s in statuses {
            match s {
                200 => ok += 1,
                429 => limited_count += 1,
                _ => other_status += 1,
            }
        }
        sample = sample.or(refused.into_iter().next());
    }
    assert_eq!(other_status, 0, "the flood got only 200s and 429s");
    // 2 s at 40/s and a burst of 40: 120, give or take the edges of the run.
    assert!((90..=140).contains(&ok), "flood served {ok}");
    // 800 sent less those served; fewer when a loaded machine slows the senders.
    assert!(limited_count >= 400, "flood refused {limited_count}");
    let sample = sample.expect("a refused answer");
    assert_eq!(sample.header("anyedge-error"), Some("rate_limited"));
    assert_eq!(sample.header("retry-after"), Some("1"));
    for (who, task) in [("same app", calm), ("other app", elsewhere)] {
        let (statuses, latencies, _) = task.await.expect("calm");
        assert!(statuses.iter().all(|s| *s == 200), "{who}: {statuses:?}");
        assert!(statuses.len() >= 39, "{who}: {} requests", statuses.len());
        let p99 = p99(latencies);
        eprintln!("{who}: {} requests, p99 {p99:?}", statuses.len());
        assert!(p99 < Duration::from_millis(50), "{who}: p99 {p99:?}");
    }

    // The app's total on this node: 10 a second for every client together.
    let mut total_ok = 0;
    for k in 0..30 {
        let src = ip(if k % 2 == 0 { "127.0.0.4" } else { "127.0.0.5" });
        let a = get_from(src, port, "capped.test", "").await;
        total_ok += usize::from(a.status == 200);
    }
    assert!((10..=12).contains(&total_ok), "total served {total_ok}");

    // Raw TCP: new connections per second per client address.
    let mut carried = 0;
    for _ in 0..10 {
        carried += usize::from(tcp_echoes(ip("127.0.0.6"), tcp_port).await);
    }
    assert!((3..=4).contains(&carried), "carried {carried}");
    assert!(
        tcp_echoes(ip("127.0.0.7"), tcp_port).await,
        "another client"
    );

    let text = node.metrics().render();
    let client = series(
        &text,
        r#"anyedge_rate_limited_total{app="limited",scope="client"}"#,
    );
    assert_eq!(client, f64::from(limited_count), "{text}");
    let total = series(
        &text,
        r#"anyedge_rate_limited_total{app="capped",scope="total"}"#,
    );
    assert_eq!(total, (30 - total_ok) as f64);
    assert!(
        series(
            &text,
            r#"anyedge_rate_limited_total{app="tcp",scope="client"}"#
        ) >= 6.0
    );
    assert_eq!(
        series(
            &text,
            r#"anyedge_errors_total{app="limited",code="rate_limited"}"#
        ),
        f64::from(limited_count)
    );
    drop(node);
}

/// An HTTP/2 instance that refuses every stream (REFUSED_STREAM: safe to retry elsewhere),
/// counting the streams.
async fn refusing_instance(streams: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let streams = streams.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    streams.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_failing_retries_stay_within_the_budget() {
    let streams = Arc::new(AtomicUsize::new(0));
    let mut instances = String::new();
    for k in 0..3 {
        let addr = refusing_instance(streams.clone()).await;
        instances += &format!("  [[apps.instances]]\n  id = \"i{k}\"\n  address = \"{addr}\"\n");
    }
    let port = free_port();
    let sha = token_sha();
    let toml = format!(
        r#"
[[apps]]
name = "failing"
hostnames = ["failing.test"]
tokens_sha256 = ["{sha}"]
retry_budget = {{ ratio = 0.1, min_per_second = 2 }}
  [[apps.services]]
  http_options = {{ h2_backend = true }}
  ports = [ {{ port = {port}, handlers = ["http"] }} ]
{instances}"#
    );
    let config = anyedge_config::parse(&toml, "policy.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("node starts");
    let one = ip("127.0.0.1");
    let started = Instant::now();
    let requests = 200;
    for _ in 0..requests {
        let a = get_from(one, port, "failing.test", "").await;
        assert_eq!(a.status, 503, "{}", a.head);
    }
    let ask = format!("anyedge-debug: route\r\nanyedge-debug-token: {TOKEN}\r\n");
    let traced = get_from(one, port, "failing.test", &ask).await;
    let elapsed = started.elapsed().as_secs_f64();
    let text = node.metrics().render();
    let made = series(
        &text,
        r#"anyedge_retries_total{app="failing",reason="refused_stream"}"#,
    );
    let skipped = series(
        &text,
        r#"anyedge_retries_skipped_total{app="failing",reason="refused_stream"}"#,
    );
    let requests = f64::from(requests + 1);
    // The budget: 10 % of the requests, and 2 a second of the run (and its first second).
    let budget = 0.1 * requests + 2.0 * (elapsed + 1.0);
    eprintln!("{requests} requests in {elapsed:.2}s: {made} retries made, {skipped} skipped, budget {budget:.1}");
    assert!(made <= budget, "{made} retries over the budget of {budget}");
    assert!(
        made >= 0.1 * requests - 1.0,
        "the ratio's share was made: {made}"
    );
    // Without a budget every request would try all three instances (two retries each): each
    // request either made its retries or had one skipped, and then failed.
    assert!(made + skipped >= requests, "made {made}, skipped {skipped}");
    assert!(skipped >= requests - made, "skipped {skipped}");
    eventually("the instances to count every stream", DEADLINE, || async {
        let seen = streams.load(Ordering::SeqCst) as f64;
        (seen == requests + made).then_some(())
    })
    .await;
    let route = traced
        .header("anyedge-route")
        .unwrap_or_default()
        .to_string();
    assert!(
        route.contains("retry_skipped=budget; reason=refused_stream"),
        "{route}"
    );
    drop(node);
}
