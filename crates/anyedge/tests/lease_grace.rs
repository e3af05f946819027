//! Worker liveness beyond the catalog (issue 16 item 5; `docs/cluster.md`, "Instances lost
//! with a lease"), with a real etcd and real nodes: an etcd outage long enough for the worker's
//! lease to expire makes the edge relist a catalog without the worker's instances, while the
//! worker, still cut off from etcd, serves them and reports them over its load feed. The edge
//! keeps routing to them, and stops routing to one the worker no longer reports.

use anyedge_test_support::cluster::{get_with, local, Node, Pki};
use anyedge_test_support::etcd::Etcd;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::relay::Relay;
use anyedge_test_support::{eventually, free_port};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

/// One GET through the edge: its start and end, and the instance that answered (`None`: it
/// failed: no answer, or not 200). Never retried.
#[derive(Clone, Debug)]
struct Sample {
    start: Instant,
    end: Instant,
    answer: Option<String>,
}

async fn get_web(port: u16, extra: &[(&str, &str)]) -> Option<String> {
    get_with(local(port), "web.test", "/", extra)
        .await
        .filter(|(s, _, _)| *s == 200)
        .map(|(_, _, b)| b.trim().to_string())
}

/// `clients` loops of sequential GETs, each on a connection of its own, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (s, l) = (stop.clone(), log.clone());
                tokio::spawn(async move {
                    while !s.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let answer = get_web(port, &[]).await;
                        let end = Instant::now();
                        l.lock().expect("lock").push(Sample { start, end, answer });
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load { stop, log, tasks }
    }

    fn count(&self) -> usize {
        self.log.lock().expect("lock").len()
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let samples = self.log.lock().expect("lock").clone();
        samples
    }
}

fn edge_toml(pki: &Pki, etcd: &str) -> String {
    format!(
        "[node]\nid = \"edge\"\nregion = \"ord\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{etcd}\"]\n",
        pki.cluster_section("edge"),
    )
}

fn worker_toml(pki: &Pki, etcd: &str, backhaul: u16, instances: &[(&str, String)]) -> String {
    let mut toml = format!(
        "[node]\nid = \"w1\"\nregion = \"iad\"\nroles = [\"worker\"]\ndrain_timeout = \"1s\"\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{etcd}\"]\n",
        pki.cluster_section("w1"),
    );
    for (id, address) in instances {
        toml += &format!("[[instances]]\napp = \"web\"\nid = \"{id}\"\naddress = \"{address}\"\n");
    }
    toml
}

fn anyedge(etcd: &Etcd, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .args(["--etcd", &etcd.url()])
        .output()
        .expect("run anyedge");
    assert!(
        out.status.success(),
        "anyedge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The outage: etcd frozen 13 s (the lease TTL is 10 s), the worker cut off from it until 6 s
/// after it returns, so the edge relists a catalog without the worker's registrations and lives
/// on the grace rule for those 6 s. Meanwhile instance `b` leaves the worker's file: the worker
/// stops reporting it and the edge stops routing to it. Two clients that never retry: none of
/// their requests fails, before, during or after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_that_expires_the_workers_lease_loses_no_request() {
    let etcd = Etcd::start();
    let etcd_addr = etcd
        .url()
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("etcd address");
    // The worker reaches etcd through this relay: cut, etcd is away for the worker alone.
    let relay = Relay::start(etcd_addr).await;
    let via_relay = format!("http://127.0.0.1:{}", relay.port);
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let apps = dir.path().join("web.toml");
    std::fs::write(
        &apps,
        format!("[[apps]]\nname = \"web\"\nhostnames = [\"web.test\"]\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"),
    )
    .expect("write apps");
    anyedge(&etcd, &["apps", "put", apps.to_str().expect("utf-8")]);
    let a = HttpInstance::start("a", false).await;
    let b = HttpInstance::start("b", false).await;
    let backhaul = free_port();
    let both = [("a", a.addr.to_string()), ("b", b.addr.to_string())];
    let worker = Node::start(bin(), "w1", &worker_toml(&pki, &via_relay, backhaul, &both));
    let edge = Node::start(bin(), "edge", &edge_toml(&pki, &etcd.url()));
    worker.up().await;
    edge.up().await;
    for id in ["a", "b"] {
        eventually(
            &format!("{id} routable"),
            Duration::from_secs(10),
            || async {
                get_web(port, &[("anyedge-force-instance-id", id)])
                    .await
                    .filter(|got| got == id)
            },
        )
        .await;
    }

    let load = Load::start(port, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = load.count();
    etcd.pause();
    relay.cut();
    let outage = Instant::now();
    // A fixed length, not a wait for a condition: longer than the lease TTL (10 s).
    tokio::time::sleep(Duration::from_secs(13)).await;
    etcd.resume();
    let returned = Instant::now();
    eventually(
        "the edge relists a catalog without the worker's registrations and keeps both instances",
        Duration::from_secs(15),
        || async {
            // The edge's watch may still count itself connected from before the freeze, so
            // the relist shows in the kept-instances gauge, not in `connected`.
            let listed = anyedge(&etcd, &["instances", "list"]);
            let m = edge.metrics().await;
            (!listed.contains("web\ta")
                && m.contains("anyedge_catalog_connected 1")
                && m.contains("anyedge_catalog_graced_instances 2"))
            .then_some(())
        },
    )
    .await;
    let relisted = Instant::now();
    assert!(
        edge.knows_instance("web", "a").await && edge.knows_instance("web", "b").await,
        "the edge dropped instances the worker still reports"
    );
    // While the worker cannot reach etcd: b leaves its file. It stops reporting b, and the
    // edge stops routing to it.
    worker.rewrite(&worker_toml(&pki, &via_relay, backhaul, &both[..1]));
    let removed = Instant::now();
    eventually("the edge lets b go", Duration::from_secs(3), || async {
        (!edge.knows_instance("web", "b").await).then_some(())
    })
    .await;
    let b_gone_after = removed.elapsed();
    let routed_b_after = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(edge.knows_instance("web", "a").await);
    let graced_until = returned + Duration::from_secs(6);
    tokio::time::sleep(graced_until.saturating_duration_since(Instant::now())).await;
    relay.restore();
    eventually(
        "the worker registers again",
        Duration::from_secs(15),
        || async {
            let listed = anyedge(&etcd, &["instances", "list"]);
            (listed.contains("web\ta") && !listed.contains("web\tb")).then_some(())
        },
    )
    .await;
    let reregistered = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.finish().await;

    let failed: Vec<_> = samples.iter().filter(|s| s.answer.is_none()).collect();
    let to_b_late = samples
        .iter()
        .filter(|s| s.start > routed_b_after && s.answer.as_deref() == Some("b"))
        .count();
    let in_grace = samples
        .iter()
        .filter(|s| s.start >= relisted && s.end <= reregistered)
        .count();
    let logs = edge.logs();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        samples.len()
    );
    assert_eq!(to_b_late, 0, "b got requests after the edge let it go");
    assert!(
        in_grace >= 50,
        "only {in_grace} requests while the edge kept the worker's instances"
    );
    assert!(logs.contains("kept while the worker's load feed reports it"));
    assert!(before > 0);
    // A graceful stop is no loss: the worker's feeds end before its lease is revoked, and the
    // edge lets its instance go at once rather than keep it.
    let kept_before = edge
        .logs()
        .matches("kept while the worker's load feed")
        .count();
    let mut worker = worker;
    worker.proc.as_ref().expect("running").signal(libc::SIGTERM);
    let stopping = Instant::now();
    eventually(
        "the edge lets the stopped worker's instance go",
        Duration::from_secs(5),
        || async { (!edge.knows_instance("web", "a").await).then_some(()) },
    )
    .await;
    let gone_after = stopping.elapsed();
    assert!(gone_after < Duration::from_secs(2), "{gone_after:?}");
    assert_eq!(
        edge.logs()
            .matches("kept while the worker's load feed")
            .count(),
        kept_before,
        "a gracefully stopped worker's instance was kept"
    );
    worker.kill();
    eprintln!(
        "| etcd frozen 13 s (lease expired), the worker cut off 6 s more | {} | 0 | {in_grace} served while graced ({:?} after the relist to the worker's return); b dropped {b_gone_after:?} after it left the worker's file; outage began {:?} before the relist |",
        samples.len(),
        reregistered - relisted,
        relisted - outage,
    );
}
