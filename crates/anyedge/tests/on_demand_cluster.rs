//! Instances started on demand over backhaul (`docs/on-demand.md`, "Over backhaul"): an
//! edge-only node in `ord` and a worker-only node in `iad` (real `anyedge run` processes, a
//! file-configured cluster with mutual TLS); the worker's instance is a real process started by
//! its `command` driver (this test binary run again: `wake::instance_process`). The edge sees
//! the instance's state in the worker's load feed, asks the worker for the start on a stream of
//! its own, and forwards the waiting requests once the worker says it is ready.

mod wake;

use anyedge_test_support::cluster::{get, Node, Pki};
use anyedge_test_support::http_client::{self, Client};
use anyedge_test_support::{eventually, free_port};
use std::path::Path;
use std::time::{Duration, Instant};
use wake::{burst, local, Proc};

const DEADLINE: Duration = Duration::from_secs(20);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

const REGIONS: &str =
    "[regions.ord]\nlat = 41.98\nlon = -87.90\n[regions.iad]\nlat = 38.95\nlon = -77.45\n";

/// The app `sleepy` on edge port `port` with one instance; `node` adds `node = "w1"` (the
/// edge's view of it), `driver` is its driver line.
fn app(port: u16, keys: &str, instance_port: u16, driver: &str, node: bool) -> String {
    let node = if node { "  node = \"w1\"\n" } else { "" };
    format!(
        "[[apps]]\nname = \"sleepy\"\nhostnames = [\"sleepy.test\"]\nconcurrency = {{ type = \"requests\", soft_limit = 20, hard_limit = 25 }}\nlimits = {{ queue = 512, queue_timeout = \"5s\" }}\n{keys}\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"sleepy-1\"\n  region = \"iad\"\n  address = \"127.0.0.1:{instance_port}\"\n{node}  {driver}\n"
    )
}

/// A worker `w1` in `iad` whose backhaul listens on `backhaul`, and an edge `edge1` in `ord`
/// that reaches it there, both up. The edge's copy of the driver appends to `edge.ran` in
/// `dir` if it is ever run (it must not be: the worker owns the instance).
async fn cluster(
    pki: &Pki,
    dir: &Path,
    port: u16,
    keys: &str,
    p: &Proc<'_>,
    driver: &str,
) -> (Node, Node, u16) {
    let backhaul = free_port();
    let worker = format!(
        "[node]\nid = \"w1\"\nregion = \"iad\"\nroles = [\"worker\"]\ndrain_timeout = \"1s\"\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\n{}{REGIONS}{}",
        pki.cluster_section("w1"),
        app(port, keys, p.port, driver, false)
    );
    let ran = dir.join("edge.ran");
    let edge_driver = format!(
        "driver = {{ type = \"command\", start = \"echo start >> {0}; exit 1\", stop = \"echo stop >> {0}\" }}",
        ran.display()
    );
    let edge = format!(
        "[node]\nid = \"edge1\"\nregion = \"ord\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}{REGIONS}[[nodes]]\nid = \"w1\"\nregion = \"iad\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{}",
        pki.cluster_section("edge1"),
        app(port, keys, p.port, &edge_driver, true)
    );
    let worker = Node::start(bin(), "worker", &worker);
    let edge = Node::start(bin(), "edge", &edge);
    worker.up().await;
    edge.up().await;
    (worker, edge, backhaul)
}

/// The state of `sleepy-1` in a node's `/v1/status`.
async fn state(node: &Node) -> Option<String> {
    let (_, body) = get(node.admin, "admin", "/v1/status").await?;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    let apps = status.get("apps")?.as_array()?;
    let app = apps.iter().find(|a| a["name"] == "sleepy")?;
    let inst = app["instances"].as_array()?.first()?;
    Some(inst["state"].as_str()?.to_string())
}

async fn state_is(node: &Node, want: &str) {
    eventually(&format!("{} says {want}", node.name), DEADLINE, || async {
        (state(node).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_at_an_edge_wake_a_stopped_instance_on_a_worker_with_one_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let p = Proc {
        id: "sleepy-1",
        port: free_port(),
        delay_ms: 1500,
        dir: dir.path(),
    };
    let port = free_port();
    let keys = "start_timeout = \"10s\"";
    let (worker, edge, _) = cluster(&pki, dir.path(), port, keys, &p, &p.driver()).await;
    // The worker's first look found it stopped; its feed tells the edge before any request.
    state_is(&worker, "stopped").await;
    state_is(&edge, "stopped").await;

    let began = Instant::now();
    let requests = tokio::spawn(burst(port, 50));
    // The edge follows the start while it runs (the instance listens 1.5 s after its start).
    eventually(
        "the edge says starting",
        Duration::from_millis(1400),
        || async { (state(&edge).await.as_deref() == Some("starting")).then_some(()) },
    )
    .await;
    let results = requests.await.expect("burst");
    let wall = began.elapsed();
    let bad: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of 50 failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(p.count("starts"), 1, "exactly one start, on the worker");
    assert!(
        !dir.path().join("edge.ran").exists(),
        "the edge never runs a driver of the worker's instance"
    );
    assert_eq!(state(&edge).await.as_deref(), Some("running"));
    assert_eq!(state(&worker).await.as_deref(), Some("running"));
    // The added latency: the first answer against the moment the instance listened.
    let ready_ms: u128 = std::fs::read_to_string(dir.path().join("sleepy-1.ready"))
        .expect("ready file")
        .trim()
        .parse()
        .expect("ms");
    let first = results.iter().map(|r| r.3).min().unwrap_or_default();
    let slowest = results.iter().map(|r| r.2).max().unwrap_or_default();
    eprintln!(
        "50 requests over backhaul in {wall:?} (slowest {slowest:?}); first answer {} ms after the instance listened",
        first as i128 - ready_ms as i128
    );
    // Served now without waiting.
    let results = burst(port, 5).await;
    p.kill();
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
    assert_eq!(p.count("starts"), 1);
    drop((worker, edge));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_on_a_worker_answers_the_edges_waiters_503_instance_start_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let p = Proc {
        id: "sleepy-1",
        port: free_port(),
        delay_ms: 0,
        dir: dir.path(),
    };
    let port = free_port();
    let starts = dir.path().join("sleepy-1.starts");
    let failing = format!(
        "driver = {{ type = \"command\", start = \"echo start >> {}; sleep 0.3; echo no machine today >&2; exit 3\", stop = \"true\" }}",
        starts.display()
    );
    let keys = "start_timeout = \"2s\"";
    let (worker, edge, _) = cluster(&pki, dir.path(), port, keys, &p, &failing).await;
    state_is(&edge, "stopped").await;
    let began = Instant::now();
    let results = burst(port, 20).await;
    for (status, code, took, _) in &results {
        // `burst` checks every 503 carries Retry-After.
        assert_eq!((*status, code.as_str()), (503, "instance_start_failed"));
        assert!(*took < Duration::from_millis(2000 + 1500), "{took:?}");
    }
    eprintln!("20 waiters answered 503 within {:?}", began.elapsed());
    assert_eq!(p.count("starts"), 1, "one start for every waiter");
    assert_eq!(state(&worker).await.as_deref(), Some("failed"));
    assert_eq!(state(&edge).await.as_deref(), Some("failed"));
    assert!(!dir.path().join("edge.ran").exists());
}

/// One HTTP/2 stream to the worker's backhaul as an edge would open it: `(status, the
/// retry-elsewhere header, Retry-After)`. `start` sends a start request, else a request for
/// `sleepy-1`.
async fn stream(client: &mut Client, start: bool) -> (u16, Option<String>, Option<String>) {
    let header = |resp: &http::Response<_>, name: &str| {
        resp.headers()
            .get(name)
            .map(|v: &http::HeaderValue| v.to_str().expect("ascii").to_string())
    };
    let req = http_client::request("GET", "sleepy.test", "/", true);
    let req = if start {
        req.header("anyedge-backhaul-start", "sleepy sleepy-1")
    } else {
        req.header("anyedge-backhaul", "sleepy sleepy-1 127.0.0.1 1 http 1.1")
    };
    let resp = client
        .send(req.body(http_client::empty()).expect("request"))
        .await
        .expect("response");
    let retry = header(&resp, "anyedge-retry-elsewhere");
    let after = header(&resp, "retry-after");
    (resp.status().as_u16(), retry, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_refuses_a_stopped_instance_not_running_and_starts_it_once_for_every_edge() {
    use anyedge_test_support::cluster::{backhaul_client, backhaul_connect};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let p = Proc {
        id: "sleepy-1",
        port: free_port(),
        delay_ms: 800,
        dir: dir.path(),
    };
    let port = free_port();
    let keys = "start_timeout = \"10s\"";
    let (worker, edge, backhaul) = cluster(&pki, dir.path(), port, keys, &p, &p.driver()).await;
    drop(edge);
    state_is(&worker, "stopped").await;
    // Two edges' connections (certificates of two nodes).
    let mut edges = Vec::new();
    for id in ["edge-a", "edge-b"] {
        let cert = anyedge_tls::cluster_ca::issue_node(pki.ca(), id).expect("node cert");
        let client = Some((cert.cert.as_str(), cert.key.as_str()));
        let config = backhaul_client(&pki.ca().cert, client, b"anyedge-h2");
        let tls = backhaul_connect(local(backhaul), "w1", config)
            .await
            .expect("tls");
        edges.push(Client::over(tls, true).await);
    }
    // A request for it while stopped is refused for a start, not as unhealthy.
    let (status, retry, _) = stream(&mut edges[0], false).await;
    assert_eq!((status, retry.as_deref()), (503, Some("not_running")));
    // Both edges ask at once: one start, both answered when it is ready.
    let began = Instant::now();
    let (a, b) = edges.split_at_mut(1);
    let (ra, rb) = tokio::join!(stream(&mut a[0], true), stream(&mut b[0], true));
    let took = began.elapsed();
    assert_eq!((ra.0, rb.0), (200, 200), "{ra:?} {rb:?}");
    assert!(
        took >= Duration::from_millis(800),
        "answered when ready: {took:?}"
    );
    assert_eq!(p.count("starts"), 1);
    let served = stream(&mut edges[1], false).await;
    p.kill();
    assert_eq!(served.0, 200, "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_stops_an_idle_instance_only_when_edges_are_not_using_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let p = Proc {
        id: "sleepy-1",
        port: free_port(),
        delay_ms: 200,
        dir: dir.path(),
    };
    let port = free_port();
    let keys = "auto_stop = \"stop\"\nstop_after = \"1s\"\nstart_timeout = \"10s\"";
    let (worker, edge, _) = cluster(&pki, dir.path(), port, keys, &p, &p.driver()).await;
    state_is(&edge, "stopped").await;
    let first = get(local(port), "sleepy.test", "/").await;
    assert_eq!(first.map(|r| r.0), Some(200));
    // A request through the edge in flight for 1.5 s, longer than stop_after: the worker
    // counts it (it carries the stream), so the instance is never idle, never stopping.
    let slow = tokio::spawn(async move { get(local(port), "sleepy.test", "/slow").await });
    let mut states = Vec::new();
    while !slow.is_finished() {
        states.push(state(&worker).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = slow.await.expect("slow request");
    assert_eq!(answered.map(|r| r.0), Some(200));
    assert!(
        states.iter().all(|s| s.as_deref() == Some("running")),
        "{states:?}"
    );
    assert_eq!(p.count("stops"), 0);
    // Idle: the worker stops it, and the edge hears it in the feed.
    state_is(&edge, "stopped").await;
    assert_eq!(p.count("stops"), 1);
    // Load returning at the edge starts it again.
    let again = get(local(port), "sleepy.test", "/").await;
    p.kill();
    assert_eq!(again.map(|r| r.0), Some(200));
    assert_eq!(p.count("starts"), 2);
}

/// The same on the etcd catalog: the worker registers its instance with the kind of its driver
/// (`instances/sleepy/sleepy-1`, `"driver": "command"`), which is all the edge learns of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_an_edge_wakes_an_instance_a_worker_registered_with_a_driver() {
    use anyedge_test_support::etcd::Etcd;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let p = Proc {
        id: "sleepy-1",
        port: free_port(),
        delay_ms: 500,
        dir: dir.path(),
    };
    let port = free_port();
    let apps = dir.path().join("apps.toml");
    std::fs::write(
        &apps,
        "[[apps]]\nname = \"sleepy\"\nhostnames = [\"sleepy.test\"]\nstart_timeout = \"10s\"\nconcurrency = { type = \"requests\", soft_limit = 20, hard_limit = 25 }\nlimits = { queue = 512, queue_timeout = \"5s\" }\n[[apps.services]]\nports = [ { port = PORT, bind = \"127.0.0.1\", handlers = [\"http\"] } ]\n".replace("PORT", &port.to_string()),
    )
    .expect("write apps");
    let put = std::process::Command::new(bin())
        .args([
            "apps",
            "put",
            apps.to_str().expect("utf-8"),
            "--etcd",
            &etcd.url(),
        ])
        .output()
        .expect("apps put");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let catalog = format!(
        "[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n",
        etcd.url()
    );
    let backhaul = free_port();
    let worker = Node::start(
        bin(),
        "worker",
        &format!(
            "[node]\nid = \"w1\"\nregion = \"iad\"\nroles = [\"worker\"]\ndrain_timeout = \"1s\"\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{}{catalog}{REGIONS}[[instances]]\napp = \"sleepy\"\nid = \"sleepy-1\"\naddress = \"127.0.0.1:{}\"\n{}\n",
            pki.cluster_section("w1"),
            p.port,
            p.driver()
        ),
    );
    let edge = Node::start(
        bin(),
        "edge",
        &format!(
            "[node]\nid = \"edge1\"\nregion = \"ord\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}{catalog}{REGIONS}",
            pki.cluster_section("edge1")
        ),
    );
    worker.up().await;
    edge.up().await;
    state_is(&worker, "stopped").await;
    state_is(&edge, "stopped").await;
    let results = burst(port, 20).await;
    p.kill();
    let bad: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of 20 failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(p.count("starts"), 1);
    assert_eq!(state(&edge).await.as_deref(), Some("running"));
}
