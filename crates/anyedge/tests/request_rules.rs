//! Requests whose framing or naming could make the proxy and an instance disagree, sent as raw
//! bytes: two `Host` fields, an absolute-form target naming another host than `Host`, a
//! malformed chunked body. The proxy answers the client's mistakes with 400 as the client's,
//! and routes and forwards one name only.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_instance::HttpInstance;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn app(name: &str, port: u16, instance: SocketAddr) -> String {
    format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"{name}-1\"\n  address = \"{instance}\"\n"
    )
}

/// Two apps on one port; (node, port, alpha's instance, beta's instance).
async fn two_apps() -> (Node, u16, HttpInstance, HttpInstance) {
    let (a, b) = (
        HttpInstance::start("alpha", false).await,
        HttpInstance::start("beta", false).await,
    );
    let port = free_port();
    let toml = format!(
        "{}{}",
        app("alpha", port, a.addr),
        app("beta", port, b.addr)
    );
    let config = anyedge_config::parse(&toml, "rules.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(local(0))).await.expect("node");
    (node, port, a, b)
}

/// Send `raw` on a new connection and read the answer until the proxy closes or 5 s pass.
async fn exchange(port: u16, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(local(port))
        .await
        .expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        // One complete answer is enough (the connection may stay open).
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_fields_are_a_bad_request_and_reach_no_instance() {
    let (node, port, a, b) = two_apps().await;
    let answer = exchange(
        port,
        b"GET /headers HTTP/1.1\r\nHost: alpha.test\r\nHost: beta.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("anyedge-error: bad_request"), "{answer}");
    assert_eq!(a.requests() + b.requests(), 0);
    let m = node.metrics().render();
    assert!(
        m.contains("anyedge_node_errors_total{code=\"bad_request\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host_routed_by_and_forwarded() {
    let (_node, port, a, b) = two_apps().await;
    let answer = exchange(
        port,
        b"GET http://beta.test/headers HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\nhost: beta.test\n"), "{answer}");
    assert!(!lower.contains("host: alpha.test"), "{answer}");
    assert_eq!((a.requests(), b.requests()), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunk_is_the_clients_fault() {
    let (node, port, _a, _b) = two_apps().await;
    let answer = exchange(
        port,
        b"POST /count HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("anyedge-error: bad_request"), "{answer}");
    let m = node.metrics().render();
    assert!(
        m.contains("anyedge_errors_total{app=\"alpha\",code=\"bad_request\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("anyedge_errors_total{app=\"alpha\",code=\"upstream_error\"} 1"),
        "{m}"
    );
}
