//! `anyedge demo` starts a working fleet: each demo app answers through the edge.

use anyedge_test_support::client::{connect, read_line};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

/// A base port whose +1, +2, +3, +80 and +90 are free right now.
fn free_base() -> u16 {
    for _ in 0..100 {
        let base = anyedge_test_support::free_port().saturating_sub(1);
        let free = [1u16, 2, 3, 80, 90].iter().all(|d| {
            base.checked_add(*d)
                .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no free demo base port");
}

/// Requests and connections the demo's workers carried for the edge over backhaul.
fn worker_streams(demo: &anyedge::demo::Demo) -> u64 {
    demo.workers
        .iter()
        .map(|w| {
            w.metrics()
                .backhaul
                .streams
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum()
}

async fn ask(port: u16, line: &str) -> String {
    let mut s = connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    s.write_all(format!("{line}\n").as_bytes())
        .await
        .expect("write");
    read_line(&mut s).await.expect("answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_apps_answer_through_the_edge() {
    let base = free_base();
    let demo = anyedge::demo::start(base).await.expect("demo starts");
    assert_eq!(ask(base + 1, "hello").await, "hello");
    for _ in 0..10 {
        assert_eq!(
            ask(base + 2, "hello").await,
            "HELLO",
            "upper never fails despite its dead targets"
        );
    }
    let who = ask(base + 3, "hi").await;
    assert!(who.starts_with("hello 127.0.0.1:"), "{who}");
    assert!(who.contains("you said: hi"), "{who}");
    assert!(demo
        .metrics()
        .render()
        .contains("anyedge_edge_tcp_connects_total{app=\"upper\"} 10"));
    // Every connection went over backhaul to a worker (the edge runs no instance).
    let streams = worker_streams(&demo);
    assert!(streams >= 12, "worker streams: {streams}");
    demo.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_http_routes_nearest_first_and_replays_writes_to_syd() {
    use anyedge_test_support::http_client::{full, request, Client};
    use http_body_util::BodyExt;
    let base = free_base();
    let _node = anyedge::demo::start(base).await.expect("demo starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], base + 80));
    let mut client = Client::h1(addr).await;
    let req = request("GET", "hello.localhost", "/", false)
        .header("anyedge-debug", "route")
        .header("anyedge-debug-token", anyedge::demo::DEMO_TOKEN)
        .body(anyedge_test_support::http_client::empty())
        .expect("request");
    let resp = client.send(req).await.expect("response");
    let route = resp
        .headers()
        .get("anyedge-route")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("route trace with the demo token");
    assert!(route.starts_with("chosen=hello-ord-"), "{route}");
    assert!(route.contains("hello-syd-1@syd"), "{route}");
    let _ = resp.into_body().collect().await;

    let req = request("POST", "hello.localhost", "/write", false)
        .body(full("x=1"))
        .expect("request");
    let resp = client.send(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("hello from hello-syd-1"), "{body}");
    assert!(
        body.contains("replayed here by the proxy: instance=hello-ord-"),
        "{body}"
    );
}

/// `anyedge demo --etcd URL`: the same fleet with its catalog in a real etcd — the demo puts
/// the apps, the workers register their instances and backhaul addresses, the edge follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_etcd_serves_through_backhaul() {
    let etcd = anyedge_test_support::etcd::Etcd::start();
    let base = free_base();
    let demo = anyedge::demo::start_with(base, Some(&etcd.url()))
        .await
        .expect("demo starts");
    let echo = anyedge_test_support::eventually(
        "echo app from etcd",
        std::time::Duration::from_secs(10),
        || async {
            let mut s = connect(SocketAddr::from(([127, 0, 0, 1], base + 1)))
                .await
                .ok()?;
            s.write_all(b"over etcd\n").await.ok()?;
            read_line(&mut s).await.ok()
        },
    )
    .await;
    assert_eq!(echo, "over etcd");
    let streams = worker_streams(&demo);
    assert!(streams >= 1, "the edge reached a worker over backhaul");
    demo.shutdown(std::time::Duration::from_secs(1)).await;
}

#[test]
fn the_demo_prints_its_dashboard_first() {
    use std::io::BufRead;
    let base = free_base();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_anyedge"))
        .args(["demo", "--base-port", &base.to_string(), "--traffic", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start anyedge demo");
    let stdout = child.stdout.take().expect("stdout");
    let first = std::io::BufReader::new(stdout)
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with(&format!("dashboard: http://127.0.0.1:{}/", base + 90)),
        "first line: {first}"
    );
}

/// The demo's app that scales to zero: stopped at start, woken by the first request (its
/// machine boots in 1 s through the demo's machines API and the `http` driver), served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sleepy_app_wakes_on_the_first_request() {
    use anyedge_test_support::http_client::Client;
    let base = free_base();
    let demo = anyedge::demo::start(base).await.expect("demo starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], base + 80));
    let began = std::time::Instant::now();
    let (status, _, body) = Client::h1(addr).await.get("sleepy.localhost", "/").await;
    let took = began.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("hello from sleepy-1 (app sleepy)"),
        "{body}"
    );
    assert!(
        took >= std::time::Duration::from_millis(900),
        "it booted: {took:?}"
    );
    let text = demo.metrics().render();
    assert!(
        text.contains("anyedge_instance_starts_total{app=\"sleepy\",result=\"ok\"} 1"),
        "{text}"
    );
    let (status, _, _) = Client::h1(addr).await.get("sleepy.localhost", "/").await;
    assert_eq!(status, 200);
    demo.shutdown(std::time::Duration::from_secs(1)).await;
}
