//! Multi-node clusters of real processes on loopback: edge-only and worker-only nodes, instances
//! reached over backhaul (mutual TLS from a cluster CA made by `anyedge_tls::cluster_ca`).
//!
//! On etcd (`store = "etcd"`, a real etcd server): placement by region distance and failover
//! when the nearest worker dies (no failed request), its return; instances added to and removed
//! from a worker's file routed within a second; a SIGKILLed worker leaving the catalog within its
//! lease TTL; an etcd outage under load (nothing fails, changes made meanwhile arrive after);
//! WebSocket and raw TCP over backhaul. On a file-configured cluster: what a worker's backhaul
//! refuses (no or foreign client certificate, a forged stream naming another app's instance), and
//! many client connections sharing a couple of HTTP/2 backhaul connections.

use anyedge_test_support::cluster::{
    backhaul_client, backhaul_connect, get, get_with, local, metric, tcp_header, Node,
};
use anyedge_test_support::etcd::Etcd;
use anyedge_test_support::http_client::{self, Client};
use anyedge_test_support::http_instance::{ws_config, HttpInstance};
use anyedge_test_support::instances::FakeInstance;
use anyedge_test_support::{eventually, free_port};
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

/// The cluster CA and node certificates, written as `anyedge certs` writes them.
struct Pki {
    dir: tempfile::TempDir,
    ca: anyedge_tls::cluster_ca::PemPair,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = anyedge_tls::cluster_ca::new_ca().expect("ca");
        std::fs::write(dir.path().join("cluster-ca.pem"), &ca.cert).expect("write");
        Pki { dir, ca }
    }

    /// `[cluster]` for node `id` (its certificate issued once, on first use).
    fn cluster_section(&self, id: &str) -> String {
        let d = self.dir.path();
        if !d.join(format!("{id}.pem")).exists() {
            let node = anyedge_tls::cluster_ca::issue_node(&self.ca, id).expect("node cert");
            std::fs::write(d.join(format!("{id}.pem")), &node.cert).expect("write");
            std::fs::write(d.join(format!("{id}-key.pem")), &node.key).expect("write");
        }
        format!(
            "[cluster]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            d.join("cluster-ca.pem").display(),
            d.join(format!("{id}.pem")).display(),
            d.join(format!("{id}-key.pem")).display()
        )
    }
}

/// Chicago (the edge), Washington (~950 km: ~14 ms estimated), Frankfurt (~7,000 km: ~105 ms),
/// Sydney (~14,900 km: ~223 ms).
const REGIONS: &str = "[regions.ord]\nlat = 41.98\nlon = -87.90\n[regions.iad]\nlat = 38.95\nlon = -77.45\n[regions.fra]\nlat = 50.03\nlon = 8.57\n[regions.syd]\nlat = -33.94\nlon = 151.18\n";

/// An edge-only node in `ord` on the etcd store.
fn edge_toml(pki: &Pki, etcd: &Etcd) -> String {
    format!(
        "[node]\nid = \"edge\"\nregion = \"ord\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n{REGIONS}",
        pki.cluster_section("edge"),
        etcd.url()
    )
}

/// A worker-only node on the etcd store; `instances` are `(app, id, address)`.
fn worker_toml(
    pki: &Pki,
    etcd: &Etcd,
    id: &str,
    region: &str,
    backhaul: u16,
    instances: &[(&str, &str, String)],
) -> String {
    let mut toml = format!(
        "[node]\nid = \"{id}\"\nregion = \"{region}\"\nroles = [\"worker\"]\ndrain_timeout = \"1s\"\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n{REGIONS}",
        pki.cluster_section(id),
        etcd.url()
    );
    for (app, iid, address) in instances {
        toml += &instance_block(app, iid, address);
    }
    toml
}

fn instance_block(app: &str, id: &str, address: &str) -> String {
    format!("[[instances]]\napp = \"{app}\"\nid = \"{id}\"\naddress = \"{address}\"\n")
}

/// `anyedge apps put` of one HTTP app `name` (hostname `NAME.test`) on `port`.
fn put_http_app(etcd: &Etcd, dir: &Path, name: &str, port: u16) {
    put_apps(
        etcd,
        dir,
        name,
        &format!(
            "[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\nconcurrency = {{ type = \"requests\", soft_limit = 200, hard_limit = 250 }}\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
        ),
    );
}

fn put_apps(etcd: &Etcd, dir: &Path, stem: &str, toml: &str) {
    let file = dir.join(format!("{stem}.toml"));
    std::fs::write(&file, toml).expect("write apps file");
    let out = Command::new(bin())
        .args(["apps", "put", file.to_str().expect("utf-8")])
        .args(["--etcd", &etcd.url()])
        .output()
        .expect("run anyedge apps put");
    assert!(
        out.status.success(),
        "apps put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sequential GETs in a loop until stopped: each one's start, end and outcome.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Debug)]
struct Sample {
    start: Instant,
    end: Instant,
    /// The instance's name from the body, or `None` for a failed request (no answer, not 200).
    answer: Option<String>,
    status: Option<u16>,
}

impl Load {
    fn start(port: u16, host: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let start = Instant::now();
                let got = get(local(port), host, "/").await;
                let end = Instant::now();
                let status = got.as_ref().map(|(st, _)| *st);
                let answer = got
                    .filter(|(st, _)| *st == 200)
                    .map(|(_, b)| b.trim().to_string());
                l.lock().expect("lock").push(Sample {
                    start,
                    end,
                    answer,
                    status,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Load { stop, log, task }
    }

    fn samples(&self) -> Vec<Sample> {
        self.log.lock().expect("lock").clone()
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task");
        self.log.lock().expect("lock").clone()
    }
}

/// Wait until at least `n` more samples than now were taken.
async fn more_samples(load: &Load, n: usize) {
    let have = load.samples().len();
    eventually("load goes on", Duration::from_secs(15), || async {
        (load.samples().len() >= have + n).then_some(())
    })
    .await;
}

/// Tests 1 and the SIGKILL part of 2: four nodes on etcd (edge in ord; workers in iad, fra,
/// syd, each running one instance of `web`). Requests go to the nearest (iad); SIGKILL on it
/// moves them to the next nearest (fra), never the farthest, with no failed request among those
/// started after the kill, also while the dead worker's instance is still in the catalog; its
/// instance leaves the edge's catalog within the lease TTL; started again, it registers again
/// and is routable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nearest_worker_dies_and_traffic_fails_over_without_errors_then_it_returns() {
    let etcd = Etcd::start();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    put_http_app(&etcd, dir.path(), "web", port);
    let near = HttpInstance::start("near", false).await;
    let next = HttpInstance::start("next", false).await;
    let far = HttpInstance::start("far", false).await;
    let mut iad = Node::start(
        bin(),
        "w-iad",
        &worker_toml(
            &pki,
            &etcd,
            "w-iad",
            "iad",
            free_port(),
            &[("web", "iad-1", near.addr.to_string())],
        ),
    );
    let fra = Node::start(
        bin(),
        "w-fra",
        &worker_toml(
            &pki,
            &etcd,
            "w-fra",
            "fra",
            free_port(),
            &[("web", "fra-1", next.addr.to_string())],
        ),
    );
    let syd = Node::start(
        bin(),
        "w-syd",
        &worker_toml(
            &pki,
            &etcd,
            "w-syd",
            "syd",
            free_port(),
            &[("web", "syd-1", far.addr.to_string())],
        ),
    );
    let edge = Node::start(bin(), "edge", &edge_toml(&pki, &etcd));
    for n in [&iad, &fra, &syd, &edge] {
        n.up().await;
    }
    eventually(
        "the edge knows every worker's instance",
        Duration::from_secs(10),
        || async {
            let m = edge.metrics().await;
            ["iad-1", "fra-1", "syd-1"]
                .iter()
                .all(|i| m.contains(&format!("app=\"web\",instance=\"{i}\"")))
                .then_some(())
        },
    )
    .await;
    eventually("web answers", Duration::from_secs(10), || async {
        get(local(port), "web.test", "/")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    // The nearest region by coordinates, and still after its RTT is measured.
    for _ in 0..20 {
        let (s, body) = get(local(port), "web.test", "/").await.expect("answer");
        assert_eq!((s, body.trim()), (200, "near"));
    }

    let load = Load::start(port, "web.test");
    more_samples(&load, 20).await;
    let kill_started = Instant::now();
    iad.kill();
    let killed = Instant::now();
    // The dead worker's instance stays in the catalog until its lease expires: every request
    // meanwhile still finds it first, fails to reach it and goes elsewhere.
    eventually(
        "iad-1 leaves the edge's catalog",
        Duration::from_secs(14),
        || async { (!edge.knows_instance("web", "iad-1").await).then_some(()) },
    )
    .await;
    let gone_after = killed.elapsed();
    more_samples(&load, 20).await;
    let samples = load.finish().await;
    assert!(
        gone_after > Duration::from_secs(3) && gone_after < Duration::from_secs(13),
        "iad-1 left after {gone_after:?}; the lease TTL is 10 s"
    );
    // Sequential requests: at most one was in flight when the kill was sent. It may fail (its
    // stream died with the worker); every other must succeed.
    let in_flight: Vec<_> = samples
        .iter()
        .filter(|s| s.start < killed && s.end > kill_started)
        .collect();
    assert!(in_flight.len() <= 2, "{in_flight:?}");
    let after: Vec<_> = samples.iter().filter(|s| s.start >= killed).collect();
    let failed: Vec<_> = after.iter().filter(|s| s.answer.is_none()).collect();
    assert!(
        after.len() >= 40,
        "only {} requests after the kill",
        after.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests started after the kill failed: {failed:?}",
        failed.len(),
        after.len()
    );
    let before_ok = samples
        .iter()
        .filter(|s| s.end <= kill_started)
        .all(|s| s.answer.as_deref() == Some("near"));
    assert!(before_ok, "before the kill every request went to near");
    let moved: Vec<_> = after.iter().filter_map(|s| s.answer.as_deref()).collect();
    assert!(
        moved.iter().all(|a| *a == "next"),
        "after the kill requests go to the next nearest region (fra), never syd: {moved:?}"
    );
    assert_eq!(far.requests(), 0, "the farthest region got requests");
    eprintln!(
        "failover: {} requests after the kill, 0 failed; in flight at the kill: {} ({} failed); iad-1 gone after {gone_after:?}",
        after.len(),
        in_flight.len(),
        in_flight.iter().filter(|s| s.answer.is_none()).count()
    );

    // Back with the same file: registered again and routable.
    iad.start_again();
    iad.up().await;
    eventually(
        "iad-1 is back in the edge's catalog",
        Duration::from_secs(10),
        || async { edge.knows_instance("web", "iad-1").await.then_some(()) },
    )
    .await;
    let (s, _, body) = eventually("iad-1 routable", Duration::from_secs(5), || async {
        get_with(
            local(port),
            "web.test",
            "/",
            &[("anyedge-force-instance-id", "iad-1")],
        )
        .await
        .filter(|(s, _, _)| *s == 200)
    })
    .await;
    assert_eq!((s, body.trim()), (200, "near"));
    // Traffic returns to the nearest region.
    let back = near.requests();
    eventually(
        "unforced traffic returns to iad",
        Duration::from_secs(10),
        || async {
            for _ in 0..10 {
                let (s, body) = get(local(port), "web.test", "/").await?;
                if s != 200 || body.trim() != "near" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    assert!(near.requests() >= back + 10);
    drop(edge);
}

/// The instance name a forced request to `instance` of `web` gets, if it gets a 200.
async fn forced(port: u16, instance: &str) -> Option<String> {
    get_with(
        local(port),
        "web.test",
        "/",
        &[("anyedge-force-instance-id", instance)],
    )
    .await
    .filter(|(s, _, _)| *s == 200)
    .map(|(_, _, b)| b.trim().to_string())
}

/// Test 2 (add/remove) and the WebSocket and raw TCP parts of 5, on etcd: an instance added to
/// a worker's file (the worker reloads on the change and registers it) is routable from the edge
/// within 1 s; removed from the file, it stops receiving within 1 s. WebSocket (HTTP/1.1 upgrade
/// at the edge, extended CONNECT over backhaul) and raw TCP cross backhaul end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_file_changes_route_within_a_second_and_websocket_and_tcp_cross_backhaul() {
    let etcd = Etcd::start();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, tcp_port) = (free_port(), free_port());
    put_http_app(&etcd, dir.path(), "web", port);
    put_apps(
        &etcd,
        dir.path(),
        "echo",
        &format!("[[apps]]\nname = \"echo\"\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {tcp_port}, bind = \"127.0.0.1\" }} ]\n"),
    );
    let a = HttpInstance::start("a", false).await;
    let b = HttpInstance::start("b", false).await;
    let echo = FakeInstance::echo("echo-on-worker").await;
    let worker = Node::start(
        bin(),
        "w1",
        &worker_toml(
            &pki,
            &etcd,
            "w1",
            "iad",
            free_port(),
            &[
                ("web", "a", a.addr.to_string()),
                ("echo", "e1", echo.addr.to_string()),
            ],
        ),
    );
    let edge = Node::start(bin(), "edge", &edge_toml(&pki, &etcd));
    worker.up().await;
    edge.up().await;
    let (_, body) = eventually("web answers from a", Duration::from_secs(10), || async {
        get(local(port), "web.test", "/")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!(body.trim(), "a");
    assert_eq!(forced(port, "b").await, None, "b is not there yet");

    // Added to the worker's file: routable from the edge within 1 s.
    let with_b = worker.read_config() + &instance_block("web", "b", &b.addr.to_string());
    let t0 = Instant::now();
    worker.rewrite(&with_b);
    let got = eventually("b routable", Duration::from_secs(1), || async {
        forced(port, "b").await
    })
    .await;
    let added_after = t0.elapsed();
    assert_eq!(got, "b");

    // Removed from the file: not chosen any more within 1 s.
    let only_b = with_b.replace(&instance_block("web", "a", &a.addr.to_string()), "");
    assert_ne!(only_b, with_b);
    let t0 = Instant::now();
    worker.rewrite(&only_b);
    eventually(
        "a leaves the edge's catalog",
        Duration::from_secs(1),
        || async { (!edge.knows_instance("web", "a").await).then_some(()) },
    )
    .await;
    let removed_after = t0.elapsed();
    let a_count = a.requests();
    for _ in 0..20 {
        let (s, body) = get(local(port), "web.test", "/").await.expect("answer");
        assert_eq!((s, body.trim()), (200, "b"));
    }
    assert_eq!(a.requests(), a_count, "a still got requests after removal");
    let (s, _, _) = get_with(
        local(port),
        "web.test",
        "/",
        &[("anyedge-force-instance-id", "a")],
    )
    .await
    .expect("answer");
    assert_eq!(s, 503, "a forced request to a removed instance");
    eprintln!("instance added: routable after {added_after:?}; removed: gone after {removed_after:?}");

    // WebSocket through the edge, over backhaul (extended CONNECT), to b's /ws echo.
    let tcp = tokio::net::TcpStream::connect(local(port))
        .await
        .expect("connect");
    let (mut ws, resp) =
        tokio_tungstenite::client_async_with_config("ws://web.test/ws", tcp, Some(ws_config()))
            .await
            .expect("websocket handshake through the edge and backhaul");
    assert_eq!(resp.status(), 101);
    for msg in [
        Message::text("hello over backhaul"),
        Message::binary(vec![7u8; 100_000]),
    ] {
        ws.send(msg.clone()).await.expect("send");
        let back = ws.next().await.expect("a reply").expect("ok");
        assert_eq!(back, msg);
    }
    ws.close(None).await.expect("close");

    // Raw TCP through the edge, over its own TLS backhaul connection, to the echo instance.
    let mut c = tokio::net::TcpStream::connect(local(tcp_port))
        .await
        .expect("connect");
    c.write_all(b"ping over backhaul\n").await.expect("write");
    let want = "echo-on-worker\nping over backhaul\n";
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 256];
        while got.len() < want.len() {
            let n = c.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("echo in time");
    assert_eq!(String::from_utf8_lossy(&got), want);
    c.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read to end");
    assert!(rest.is_empty());
    assert_eq!(echo.accepted(), 1);

    let w = worker.metrics().await;
    // The 20 requests, the WebSocket and the TCP connection at least.
    assert!(
        metric(&w, "anyedge_backhaul_streams_total") >= 22.0,
        "{w}"
    );
    let e = edge.metrics().await;
    assert!(
        metric(&e, "anyedge_backhaul_connections{kind=\"h2\"}") >= 1.0,
        "{e}"
    );
}

/// Test 3: etcd stopped for 10 s under a steady stream of requests through the edge to a
/// worker: none fails. Meanwhile an instance is added in the worker's file; after etcd returns
/// every node resyncs: the edge routes to the new instance, and an app put right after etcd
/// returns (whose instance the worker had registered all along) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_under_load_fails_nothing_and_changes_made_meanwhile_arrive() {
    let mut etcd = Etcd::start();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, later_port) = (free_port(), free_port());
    put_http_app(&etcd, dir.path(), "web", port);
    let a = HttpInstance::start("a", false).await;
    let b = HttpInstance::start("b", false).await;
    let later = HttpInstance::start("later-1", false).await;
    let worker = Node::start(
        bin(),
        "w1",
        &worker_toml(
            &pki,
            &etcd,
            "w1",
            "iad",
            free_port(),
            &[
                ("web", "a", a.addr.to_string()),
                ("later", "l1", later.addr.to_string()),
            ],
        ),
    );
    let edge = Node::start(bin(), "edge", &edge_toml(&pki, &etcd));
    worker.up().await;
    edge.up().await;
    eventually("web answers", Duration::from_secs(10), || async {
        get(local(port), "web.test", "/")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;

    let load = Load::start(port, "web.test");
    more_samples(&load, 10).await;
    etcd.stop();
    let stopped = Instant::now();
    eventually(
        "both nodes notice etcd is gone",
        Duration::from_secs(10),
        || async {
            let (e, w) = (edge.metrics().await, worker.metrics().await);
            (e.contains("anyedge_catalog_connected 0") && w.contains("anyedge_catalog_connected 0"))
                .then_some(())
        },
    )
    .await;
    // A change on the worker while etcd is away: in force there, unknown to the edge for now.
    let with_b = worker.read_config() + &instance_block("web", "b", &b.addr.to_string());
    worker.rewrite(&with_b);
    // The outage lasts 10 s (the lease TTL): a fixed length, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    assert!(!edge.knows_instance("web", "b").await);
    let during = load.samples().len();
    etcd.start_again();
    let restarted = Instant::now();
    put_http_app(&etcd, dir.path(), "later", later_port);
    eventually(
        "both nodes reconnect",
        Duration::from_secs(15),
        || async {
            let (e, w) = (edge.metrics().await, worker.metrics().await);
            (e.contains("anyedge_catalog_connected 1") && w.contains("anyedge_catalog_connected 1"))
                .then_some(())
        },
    )
    .await;
    let got = eventually(
        "b, added during the outage, routable after it",
        Duration::from_secs(10),
        || async { forced(port, "b").await },
    )
    .await;
    assert_eq!(got, "b");
    let (_, body) = eventually(
        "the app put after the outage is served",
        Duration::from_secs(10),
        || async {
            get(local(later_port), "later.test", "/")
                .await
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
    assert_eq!(body.trim(), "later-1");
    let resynced_after = restarted.elapsed();
    more_samples(&load, 10).await;
    let samples = load.finish().await;
    let failed: Vec<_> = samples.iter().filter(|s| s.answer.is_none()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        samples.len()
    );
    assert!(during >= 50, "only {during} requests by the end of the outage");
    assert!(samples.iter().all(|s| s.status == Some(200)));
    eprintln!(
        "outage: {} requests, {during} by its end, 0 failed; resynced {resynced_after:?} after etcd returned",
        samples.len()
    );
}
