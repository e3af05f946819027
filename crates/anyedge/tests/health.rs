//! System tests of active health checks: an in-process node, real HTTP and TCP instances on
//! loopback whose health the test switches, placement watched through the instances that answer
//! and the admin `/metrics`.

use anyedge::node::Node;
use anyedge_test_support::client::{connect, echo, read_line};
use anyedge_test_support::http_client::{empty, request, Client};
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::instances::FakeInstance;
use anyedge_test_support::{eventually, free_port};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::time::Duration;

/// Checks every 100 ms, two in a row to flip either way, no grace.
const FAST: &str = r#"interval = "100ms", timeout = "100ms", grace_period = "0s", unhealthy_threshold = 2, healthy_threshold = 2"#;
/// Slack for a loaded CI machine on top of interval × threshold (200 ms).
const DEADLINE: Duration = Duration::from_secs(10);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn app(
    name: &str,
    port: u16,
    handlers: &str,
    checks: &str,
    instances: &[(&str, SocketAddr)],
) -> String {
    let mut t = format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [{handlers}] }} ]\n  checks = [ {checks} ]\n"
    );
    for (id, addr) in instances {
        t += &format!("  [[apps.instances]]\n  id = \"{id}\"\n  address = \"{addr}\"\n");
    }
    t
}

fn config(toml: &str) -> anyedge_config::Config {
    anyedge_config::parse(toml, "health.toml").unwrap_or_else(|d| panic!("{d}"))
}

async fn node(toml: &str) -> Node {
    Node::start(config(toml), Some(local(0)))
        .await
        .expect("node starts")
}

async fn admin_metrics(node: &Node) -> String {
    let mut c = Client::h1(node.admin_addr()).await;
    c.get("admin", "/metrics").await.2
}

/// `anyedge_instance_healthy` of one instance, from the admin `/metrics`.
async fn healthy(node: &Node, app: &str, instance: &str) -> bool {
    let text = admin_metrics(node).await;
    let series = format!("anyedge_instance_healthy{{app=\"{app}\",instance=\"{instance}\"}} ");
    match text.lines().find_map(|l| l.strip_prefix(&series)) {
        Some("1") => true,
        Some("0") => false,
        other => panic!("{series}: {other:?} in\n{text}"),
    }
}

/// Which instance answered each of `n` requests for `host`.
async fn answers(port: u16, host: &str, n: usize) -> Vec<String> {
    let mut c = Client::h1(local(port)).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let req = request("GET", host, "/", false)
            .body(empty())
            .expect("request");
        let resp = c.send(req).await.expect("response");
        assert_eq!(resp.status(), 200, "{host}");
        let who = resp.headers()["x-instance"]
            .to_str()
            .expect("x-instance")
            .to_string();
        resp.into_body().collect().await.expect("body");
        out.push(who);
    }
    out
}

async fn http_pair() -> (Node, u16, HttpInstance, HttpInstance) {
    let (a, b) = (
        HttpInstance::start("a", false).await,
        HttpInstance::start("b", false).await,
    );
    let port = free_port();
    let check = format!("{{ type = \"http\", path = \"/healthz\", {FAST} }}");
    let toml = app(
        "web",
        port,
        "\"http\"",
        &check,
        &[("a", a.addr), ("b", b.addr)],
    );
    (node(&toml).await, port, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_takes_a_failing_instance_out_of_placement_and_back() {
    let (node, port, a, b) = http_pair().await;
    assert_eq!(node.health_checks(), 2);
    eventually("both instances answer", DEADLINE, || async {
        let seen = answers(port, "web.test", 20).await;
        (seen.iter().any(|w| w == "a") && seen.iter().any(|w| w == "b")).then_some(())
    })
    .await;
    eventually("checks reach both instances", DEADLINE, || async {
        (a.health_checks() > 0 && b.health_checks() > 0).then_some(())
    })
    .await;

    a.set_health(503);
    eventually("a marked unhealthy", DEADLINE, || async {
        (!healthy(&node, "web", "a").await).then_some(())
    })
    .await;
    let served_by_a = a.requests();
    let seen = answers(port, "web.test", 50).await;
    assert!(seen.iter().all(|w| w == "b"), "{seen:?}");
    assert_eq!(a.requests(), served_by_a, "nothing placed on a");

    a.set_health(200);
    eventually("a receives requests again", DEADLINE, || async {
        answers(port, "web.test", 10)
            .await
            .iter()
            .any(|w| w == "a")
            .then_some(())
    })
    .await;
    assert!(healthy(&node, "web", "a").await);
    let m = admin_metrics(&node).await;
    let count = |result: &str| -> u64 {
        let series = format!("anyedge_health_checks_total{{app=\"web\",result=\"{result}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} in\n{m}"))
    };
    assert!(count("fail") >= 2, "{m}");
    assert!(count("pass") >= 2, "{m}");
    node.shutdown(Duration::from_secs(1)).await;
    assert_eq!(node.health_checks(), 0, "stopped with the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unchanged_checks_and_removing_a_check_releases_the_instance() {
    let (node, port, a, b) = http_pair().await;
    a.set_health(503);
    eventually("a marked unhealthy", DEADLINE, || async {
        (!healthy(&node, "web", "a").await).then_some(())
    })
    .await;

    // Another app appears: web's checks go on with their state, so a stays out.
    let check = format!("{{ type = \"http\", path = \"/healthz\", {FAST} }}");
    let web = |checks: &str| {
        app(
            "web",
            port,
            "\"http\"",
            checks,
            &[("a", a.addr), ("b", b.addr)],
        )
    };
    let other = app("other", port, "\"http\"", "", &[("x", b.addr)]);
    let errors = node.reload(config(&format!("{}{other}", web(&check))));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(node.health_checks(), 2);
    assert!(!healthy(&node, "web", "a").await, "a's failing state kept");
    assert!(answers(port, "web.test", 20).await.iter().all(|w| w == "b"));

    // The check goes: its guard is released and a is placed again, though /healthz still fails.
    let errors = node.reload(config(&format!("{}{other}", web(""))));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(node.health_checks(), 0);
    eventually("a receives requests again", DEADLINE, || async {
        answers(port, "web.test", 10)
            .await
            .iter()
            .any(|w| w == "a")
            .then_some(())
    })
    .await;
    assert!(healthy(&node, "web", "a").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_takes_a_stopped_instance_out_before_any_client_fails_to_connect() {
    let one = FakeInstance::echo("one").await;
    let two = FakeInstance::echo("two").await;
    let port = free_port();
    let check = format!("{{ type = \"tcp\", {FAST} }}");
    let instances = [("one", one.addr), ("two", two.addr)];
    let node = node(&app("raw", port, "", &check, &instances)).await;
    assert!(healthy(&node, "raw", "one").await && healthy(&node, "raw", "two").await);
    eventually("checks connect to both", DEADLINE, || async {
        (one.accepted() > 0 && two.accepted() > 0).then_some(())
    })
    .await;

    drop(one); // its listener closes: connects are refused from now on
    eventually("one marked unhealthy", DEADLINE, || async {
        (!healthy(&node, "raw", "one").await).then_some(())
    })
    .await;
    for i in 0..30 {
        let mut s = connect(local(port)).await.expect("connect");
        assert_eq!(read_line(&mut s).await.expect("greeting"), "two", "#{i}");
        assert_eq!(echo(&mut s, b"ping\n").await.expect("echo"), b"ping\n");
    }
    let m = node.metrics().render();
    for reason in ["refused", "timeout", "resolve", "unreachable", "other"] {
        let series =
            format!("anyedge_edge_tcp_connect_failures_total{{app=\"raw\",reason=\"{reason}\"}} 0");
        assert!(m.contains(&series), "no connect retries: {series}\n{m}");
    }

    // Without the check the guard goes: one counts as healthy again (clients would now find it
    // dead and passive ejection would take over).
    let errors = node.reload(config(&app("raw", port, "", "", &instances)));
    assert!(errors.is_empty(), "{errors:?}");
    eventually("one healthy again", DEADLINE, || async {
        healthy(&node, "raw", "one").await.then_some(())
    })
    .await;
}
