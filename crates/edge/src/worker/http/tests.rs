//! The worker's HTTP service against a real instance on loopback: the service served over h2c
//! (the TLS of the backhaul listener is not what is tested here), streams sent by hyper's client
//! as an edge would send them.

use super::*;
use crate::Edge;
use anyedge_backhaul::stream;
use anyedge_catalog::{LiveRegistry, Snapshot};
use anyedge_core::Drain;
use anyedge_telemetry::Metrics;
use anyedge_test_support::http_instance::HttpInstance;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

/// Worker `w`: app `a` (one instance, `i1`, the instance given, hard limit 1) and app `b` with
/// its own `b1` (never reached).
fn config(instance: SocketAddr) -> String {
    format!(
        r#"
[node]
id = "w"
roles = ["worker"]
[[apps]]
name = "a"
hostnames = ["a.test"]
concurrency = {{ type = "requests", soft_limit = 1, hard_limit = 1 }}
[[apps.services]]
internal_port = 1
ports = [ {{ port = 8080, handlers = ["http"] }} ]
[[apps.instances]]
id = "i1"
address = "{instance}"
[[apps]]
name = "b"
hostnames = ["b.test"]
[[apps.services]]
internal_port = 1
ports = [ {{ port = 8081, handlers = ["http"] }} ]
[[apps.instances]]
id = "b1"
address = "127.0.0.1:9"
"#
    )
}

/// A worker node serving backhaul streams (our HTTP/2 server) on a loopback port, and an edge's h2 connection to it.
struct Worker {
    node: Edge,
    snapshot: Arc<Snapshot>,
    instance: HttpInstance,
    edge: SendRequest<Empty<Bytes>>,
}

impl Worker {
    async fn start() -> Worker {
        let instance = HttpInstance::start("i1", false).await;
        let mut w = Worker::start_with(&config(instance.addr)).await;
        w.instance = instance;
        w
    }

    /// A worker applying `toml`; its `instance` is a stand-in (the config names its own).
    async fn start_with(toml: &str) -> Worker {
        let instance = HttpInstance::start("unused", false).await;
        let config = anyedge_config::parse(toml, "worker.toml").unwrap_or_else(|d| panic!("{d}"));
        let snapshot = Arc::new(Snapshot::build(
            Arc::new(config),
            &LiveRegistry::new(),
            None,
        ));
        let limits = anyedge_config::Limits::default();
        let node = Edge::new(Metrics::new(), Drain::new(), &limits, Vec::new()).expect("node");
        assert!(node.apply(snapshot.clone()).is_empty());
        assert!(
            node.listening().is_empty(),
            "a worker-only node has no app ports"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = node.shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let serving = super::super::listener::serve_h2(stream, "e1".into(), shared.clone());
                tokio::spawn(serving);
            }
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (edge, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        Worker {
            node,
            snapshot,
            instance,
            edge,
        }
    }

    /// Send `GET http://a.test/headers` with these headers; the status, headers and body back.
    async fn send(&mut self, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
        let mut req = Request::builder()
            .uri("http://a.test/headers")
            .version(http::Version::HTTP_2);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).expect("request");
        let resp = self.edge.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        (parts.status, parts.headers, text)
    }

    /// A stream that is refused: 503 with the reason, nothing reaching the instance.
    async fn refused(&mut self, headers: &[(&str, &str)]) -> String {
        let before = self.instance.requests();
        let (status, h, body) = self.send(headers).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{headers:?}: {body}"
        );
        assert_eq!(
            self.instance.requests(),
            before,
            "the instance never saw it"
        );
        let reason = h.get(stream::RETRY_ELSEWHERE).expect("a retry reason");
        reason.to_str().expect("text").to_string()
    }

    fn refusals(&self, reason: &str) -> u64 {
        self.node.shared.metrics.backhaul.refusals(reason)
    }
}

const GOOD: &str = "a i1 192.0.2.7 8443 https 2";

#[tokio::test]
async fn a_stream_without_a_readable_header_is_a_bad_request() {
    let mut w = Worker::start().await;
    assert_eq!(w.refused(&[]).await, "bad_request", "no stream header");
    for bad in [
        "a i1",
        "a i1 not-an-ip 8443 https 2",
        "a i1 192.0.2.7 70000 https 2",
        "a i1 192.0.2.7 8443 gopher 2",
        "a  i1 192.0.2.7 8443 https 2",
    ] {
        assert_eq!(
            w.refused(&[(stream::STREAM, bad)]).await,
            "bad_request",
            "{bad:?}"
        );
    }
    assert_eq!(w.refusals("bad_request"), 6);
    assert_eq!(w.instance.requests(), 0);
}

#[tokio::test]
async fn a_stream_for_an_app_or_instance_not_here_is_refused_with_the_reason() {
    let mut w = Worker::start().await;
    let cases = [
        ("zz i1 192.0.2.7 8443 https 2", "unknown_app"),
        ("a b1 192.0.2.7 8443 https 2", "wrong_app"),
        ("b i1 192.0.2.7 8443 https 2", "wrong_app"),
        ("a nope 192.0.2.7 8443 https 2", "unknown_instance"),
    ];
    for (header, reason) in cases {
        assert_eq!(w.refused(&[(stream::STREAM, header)]).await, reason);
        assert!(w.refusals(reason) > 0, "{reason} counted");
    }
}

#[tokio::test]
async fn a_good_stream_reaches_the_instance_with_the_forwarding_headers_of_its_client() {
    let mut w = Worker::start().await;
    let (status, headers, body) = w
        .send(&[
            (stream::STREAM, GOOD),
            ("x-forwarded-for", "198.51.100.1"),
            // Written by the worker from the stream header, whatever the stream says.
            ("anyedge-client-ip", "203.0.113.66"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        headers.get(stream::RETRY_ELSEWHERE).is_none(),
        "an answer carries no retry header"
    );
    assert_eq!(headers["x-instance"], "i1");
    assert_eq!(w.instance.requests(), 1);
    let lines: Vec<&str> = body.lines().collect();
    for want in [
        "host: a.test",
        "x-forwarded-for: 198.51.100.1, 192.0.2.7",
        "x-forwarded-proto: https",
        "x-forwarded-ssl: on",
        "x-forwarded-port: 8443",
        "anyedge-client-ip: 192.0.2.7",
        "anyedge-forwarded-port: 8443",
        "via: 2 anyedge",
    ] {
        assert!(lines.contains(&want), "{want:?} in:\n{body}");
    }
    assert!(
        !body.contains(stream::STREAM),
        "the stream header stays on the worker:\n{body}"
    );
    assert!(!body.contains("203.0.113.66"), "{body}");
    // The slots went with the response.
    let a = w.snapshot.app("a").expect("app a");
    assert_eq!(a.live.inflight.in_use(), 0);
    assert_eq!(a.instances[0].live.inflight.in_use(), 0);
    assert_eq!(w.refusals("bad_request"), 0);
}

#[tokio::test]
async fn an_unhealthy_or_full_instance_and_a_draining_node_are_refused() {
    let mut w = Worker::start().await;
    let a = w.snapshot.app("a").expect("app a").clone();
    let failing = a.instances[0].live.check_failing();
    assert_eq!(w.refused(&[(stream::STREAM, GOOD)]).await, "unhealthy");
    drop(failing);
    let held = a.instances[0]
        .live
        .try_take(1, &a.live)
        .expect("the instance's one slot");
    assert_eq!(w.refused(&[(stream::STREAM, GOOD)]).await, "full");
    drop(held);
    assert_eq!(w.send(&[(stream::STREAM, GOOD)]).await.0, StatusCode::OK);
    w.node.shared.drain.start();
    assert_eq!(w.refused(&[(stream::STREAM, GOOD)]).await, "draining");
    assert_eq!(w.refusals("draining"), 1);
}

/// App `two` with two HTTP services: edge port 10082 reaches its instance on `first`'s port,
/// edge port 10083 on `second`'s (the instance's address names no port).
#[tokio::test]
async fn a_stream_reaches_the_service_of_the_edge_port_it_names() {
    let first = HttpInstance::start("first", false).await;
    let second = HttpInstance::start("second", false).await;
    let toml = format!(
        "[node]\nid = \"w\"\nroles = [\"worker\"]\n[[apps]]\nname = \"two\"\nhostnames = [\"two.test\"]\n[[apps.services]]\ninternal_port = {}\nports = [ {{ port = 10082, handlers = [\"http\"] }} ]\n[[apps.services]]\ninternal_port = {}\nports = [ {{ port = 10083, handlers = [\"http\"] }} ]\n[[apps.instances]]\nid = \"i\"\naddress = \"127.0.0.1\"\n",
        first.addr.port(),
        second.addr.port()
    );
    let mut w = Worker::start_with(&toml).await;
    let (status, headers, body) = w
        .send(&[(stream::STREAM, "two i 192.0.2.7 10083 http 1.1")])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        headers["x-instance"], "second",
        "edge port 10083 is the second service"
    );
    let (_, headers, _) = w
        .send(&[(stream::STREAM, "two i 192.0.2.7 10082 http 1.1")])
        .await;
    assert_eq!(headers["x-instance"], "first");
}
