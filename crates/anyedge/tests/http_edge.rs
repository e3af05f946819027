//! System tests of the HTTP edge: real HTTP/1.1 and h2c clients and instances on loopback,
//! an in-process node, several apps sharing one port.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::{empty, full, request, Client};
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::instances::{Behaviour, FakeInstance};
use http_body_util::BodyExt;
use std::net::SocketAddr;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn http_app(
    name: &str,
    hosts: &[&str],
    port: u16,
    extra: &str,
    instances: &[SocketAddr],
) -> String {
    let hosts = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut t = format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [{hosts}]\n  [[apps.services]]\n  {extra}\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    for (i, a) in instances.iter().enumerate() {
        t += &format!("  [[apps.instances]]\n  id = \"{name}-{i}\"\n  address = \"{a}\"\n");
    }
    t
}

async fn node(toml: &str) -> Node {
    let config = anyedge_config::parse(toml, "http.toml").unwrap_or_else(|d| panic!("{d}"));
    Node::start(config, Some(local(0)))
        .await
        .expect("node starts")
}

/// Three apps on one port; (node, port, instances).
async fn three_apps() -> (Node, u16, Vec<HttpInstance>) {
    let (a, b, c) = (
        HttpInstance::start("alpha", false).await,
        HttpInstance::start("beta", false).await,
        HttpInstance::start("gamma", true).await,
    );
    let port = free_port();
    let toml = format!(
        "{}{}{}",
        http_app("alpha", &["alpha.test"], port, "", &[a.addr]),
        http_app("beta", &["beta.test", "*.beta.test"], port, "", &[b.addr]),
        http_app(
            "gamma",
            &["gamma.test"],
            port,
            "http_options = { h2_backend = true }",
            &[c.addr]
        ),
    );
    (node(&toml).await, port, vec![a, b, c])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routes_among_three_apps_over_h1_and_h2c() {
    let (node, port, _instances) = three_apps().await;
    for h2 in [false, true] {
        let mut c = Client::plain(local(port), h2).await;
        for _ in 0..3 {
            for (host, want) in [
                ("alpha.test", "alpha"),
                ("BETA.test:8080", "beta"),
                ("x.beta.test", "beta"),
                ("gamma.test", "gamma"),
            ] {
                let (status, headers, body) = c.get(host, "/").await;
                assert_eq!((status, body.trim()), (200, want), "h2={h2} host={host}");
                assert_eq!(headers["x-instance"], want);
                assert!(headers.contains_key("anyedge-request-id"));
            }
        }
        let (status, headers, body) = c.get("nobody.test", "/").await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(headers["anyedge-error"], "unknown_host");
        assert!(body.starts_with("unknown_host"));
        // one level of wildcard only
        assert_eq!(c.get("a.b.beta.test", "/").await.0, 404);
    }
    let m = node.metrics().render();
    assert!(
        m.contains("anyedge_edge_http_responses_total{app=\"alpha\",status=\"200\"} 6"),
        "{m}"
    );
    assert!(
        m.contains("anyedge_node_errors_total{code=\"unknown_host\"} 4"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_once_and_spoofs_dropped() {
    let inst = HttpInstance::start("alpha", false).await;
    let port = free_port();
    let toml = format!(
        "[node]\nregion = \"ord\"\n[http]\nheader_prefix = \"fly\"\n\n{}",
        http_app("alpha", &["alpha.test"], port, "", &[inst.addr])
    );
    let _node = node(&toml).await;
    // Without `Connection` naming a field, our HTTP/1.1 server forwards the head as received
    // (no `HeaderMap`): the spoofs must be dropped on that way too.
    for (h2, named) in [(false, true), (false, false), (true, true)] {
        let mut c = Client::plain(local(port), h2).await;
        let mut req = request("GET", "alpha.test", "/headers", h2)
            .header("x-forwarded-for", "203.0.113.1")
            .header("fly-client-ip", "6.6.6.6")
            .header("Fly-Region", "forged")
            .header("x-forwarded-proto", "https");
        if named {
            req = req
                .header("connection", "x-hop")
                .header("x-hop", "must not pass");
        }
        let req = req.body(empty()).expect("request");
        let resp = c.send(req).await.expect("response");
        let id = resp.headers()["fly-request-id"]
            .to_str()
            .expect("id")
            .to_string();
        assert!(id.ends_with("-ord"), "{id}");
        let body = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .to_vec(),
        )
        .expect("utf-8");
        let lines: Vec<&str> = body.lines().collect();
        let count = |name: &str| {
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("{name}: ")))
                .count()
        };
        let value = |name: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or("")
        };
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-port",
            "x-forwarded-ssl",
            "via",
            "fly-client-ip",
            "fly-forwarded-port",
            "fly-region",
            "fly-request-id",
            "host",
        ] {
            assert_eq!(count(name), 1, "{name} once (h2={h2}):\n{body}");
        }
        assert_eq!(value("x-forwarded-for"), "203.0.113.1, 127.0.0.1");
        assert_eq!(value("fly-client-ip"), "127.0.0.1");
        assert_eq!(value("fly-region"), "ord");
        assert_eq!(value("x-forwarded-proto"), "http");
        assert_eq!(value("x-forwarded-port"), port.to_string());
        assert_eq!(value("fly-request-id"), id);
        assert_eq!(value("host"), "alpha.test");
        assert_eq!(
            count("x-hop"),
            0,
            "headers named by Connection are hop-by-hop"
        );
        assert!(
            lines[0].ends_with("HTTP/1.1"),
            "instances get HTTP/1.1: {}",
            lines[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_error_code_from_a_real_request() {
    let ok = HttpInstance::start("ok", false).await;
    let resetting = FakeInstance::start(Behaviour::ResetAfterRead).await;
    let port = free_port();
    let toml = format!(
        "[http]\nresponse_timeout = \"300ms\"\nmax_request_body = 10\nmax_header_size = 4096\n\n{}{}{}",
        http_app("ok", &["ok.test"], port, "", &[ok.addr]),
        http_app("reset", &["reset.test"], port, "", &[resetting.addr]),
        http_app("down", &["down.test"], port, "", &[local(free_port())]),
    );
    let node = node(&toml).await;
    let mut c = Client::h1(local(port)).await;
    let expect =
        |(status, headers, body): &(u16, http::HeaderMap, String), want: u16, code: &str| {
            assert_eq!(*status, want, "{code}: {body}");
            assert_eq!(
                headers
                    .get("anyedge-error")
                    .map(|v| v.to_str().unwrap_or("")),
                Some(code)
            );
        };
    expect(&c.get("nobody.test", "/").await, 404, "unknown_host");
    expect(&c.get("reset.test", "/").await, 502, "upstream_error");
    let mut c = Client::h1(local(port)).await;
    expect(&c.get("down.test", "/").await, 503, "no_instance_available");
    expect(
        &c.get("ok.test", "/slow/2000").await,
        504,
        "upstream_timeout",
    );
    let mut c = Client::h1(local(port)).await;
    let big = request("POST", "ok.test", "/echo", false)
        .body(full(vec![b'x'; 100]))
        .expect("req");
    let resp = c.send(big).await.expect("resp");
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["anyedge-error"], "body_too_large");
    let m = node.metrics().render();
    for line in [
        "anyedge_errors_total{app=\"reset\",code=\"upstream_error\"} 1",
        "anyedge_errors_total{app=\"down\",code=\"no_instance_available\"} 1",
        "anyedge_errors_total{app=\"ok\",code=\"upstream_timeout\"} 1",
        "anyedge_errors_total{app=\"ok\",code=\"body_too_large\"} 1",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
}
