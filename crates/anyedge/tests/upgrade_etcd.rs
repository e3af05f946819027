//! An upgrade of a node whose catalog is in etcd (issue 16): `anyedge run --upgrade` of a
//! worker on the etcd store, under load through an edge. The worker's registrations are kept
//! across each hand-over (the instance key is never deleted: its `create_revision` stays, only
//! its lease moves to the new process), and after the old processes' leases lapse; the edge
//! never loses the instance; no request fails.

mod handover;

use anyedge_test_support::cluster::{Node, Pki};
use anyedge_test_support::etcd::Etcd;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use handover::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ETCD_UPGRADES: usize = 3;
const INSTANCE_KEY: &str = "/anyedge/instances/alpha/real";
const NODE_KEY: &str = "/anyedge/nodes/w1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_etcd_is_upgraded_without_leaving_the_catalog() {
    let etcd = Etcd::start();
    let pki = Pki::new();
    let inst = HttpInstance::start("alpha", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, backhaul, admin) = (free_port(), free_port(), local(free_port()));
    let apps = dir.path().join("alpha.toml");
    std::fs::write(
        &apps,
        format!("[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {http_port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"),
    )
    .expect("apps file");
    let put = etcd.cli(bin(), &["apps", "put", apps.to_str().expect("utf-8")]);
    assert!(put.status.success(), "{put:?}");
    let control = dir.path().join("w1.sock");
    let worker_config = dir.path().join("w1.toml");
    std::fs::write(
        &worker_config,
        format!(
            "[node]\nid = \"w1\"\nregion = \"iad\"\nroles = [\"worker\"]\nthreads = 2\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\nadvertise = \"127.0.0.1:{backhaul}\"\ndrain_timeout = \"10s\"\ncontrol_socket = \"{}\"\n{}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n[[instances]]\napp = \"alpha\"\nid = \"real\"\naddress = \"{}\"\n",
            control.display(),
            pki.cluster_section("w1"),
            etcd.url(),
            inst.addr
        ),
    )
    .expect("config");
    let edge = Node::start(
        bin(),
        "edge",
        &format!(
            "[node]\nid = \"edge\"\nregion = \"ord\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n",
            pki.cluster_section("edge"),
            etcd.url()
        ),
    );
    let config = worker_config.to_str().expect("utf-8");
    let admin_arg = admin.to_string();
    let run = |n: usize, upgrade: bool| {
        let mut args = vec!["run", "--config", config, "--admin-listen", &admin_arg];
        if upgrade {
            args.push("--upgrade");
        }
        Proc::spawn(bin(), &args, &dir.path().join(format!("w1-{n}.log")))
    };
    let mut worker = run(0, false);
    edge.up().await;
    let addr = local(http_port);
    eventually("routable over backhaul", WAIT, || async move {
        get_once(addr).await.ok().filter(|s| s == "200")
    })
    .await;
    let (created, first_lease) = etcd.key_info(INSTANCE_KEY).expect("instance registered");
    let (node_created, _) = etcd.key_info(NODE_KEY).expect("node registered");

    // The edge's view, sampled every 20 ms: any moment it does not have the instance.
    let stop = Arc::new(AtomicBool::new(false));
    let (samples, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let watching = {
        let (stop, samples, misses) = (stop.clone(), samples.clone(), misses.clone());
        let metrics = edge.admin;
        tokio::spawn(async move {
            let needle = "anyedge_app_concurrency{app=\"alpha\",instance=\"real\"}";
            while !stop.load(Ordering::SeqCst) {
                if let Some((_, text)) =
                    anyedge_test_support::cluster::get(metrics, "admin", "/metrics").await
                {
                    samples.fetch_add(1, Ordering::SeqCst);
                    if !text.contains(needle) {
                        misses.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(tokio::spawn(keep_alive_client(
            addr,
            stop.clone(),
            tally.clone(),
        )));
        clients.push(tokio::spawn(per_request_client(
            addr,
            stop.clone(),
            tally.clone(),
        )));
    }
    let started = Instant::now();
    let mut leases = vec![first_lease];
    for n in 1..=ETCD_UPGRADES {
        let mut next = run(n, true);
        let (pid, c) = (next.pid(), control.clone());
        eventually("the new worker answers on its control socket", WAIT, || {
            let c = c.clone();
            async move { status(&c).filter(|s| s.0 == pid) }
        })
        .await;
        assert_eq!(exited(&mut worker, "the old worker drains").await, Some(0));
        let before = tally.ok.load(Ordering::SeqCst);
        eventually("requests go on through the new worker", WAIT, || {
            let n = tally.ok.load(Ordering::SeqCst);
            async move { (n > before + 100).then_some(()) }
        })
        .await;
        let (again, lease) = etcd.key_info(INSTANCE_KEY).expect("still registered");
        assert_eq!(again, created, "the instance key was deleted and put again");
        leases.push(lease);
        assert!(next.try_exit_code().is_none());
        worker = next;
    }
    // Past the lease TTL (10 s) after the last hand-over: the old processes' leases have
    // lapsed, and nothing went with them.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (after_ttl, last_lease) = etcd
        .key_info(INSTANCE_KEY)
        .expect("registered after the TTL");
    let (node_after, _) = etcd
        .key_info(NODE_KEY)
        .expect("node registered after the TTL");
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    watching.await.expect("watcher");
    let (sent, failed, refused) = (
        tally.sent.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.connect_errors.load(Ordering::SeqCst),
    );
    let errors = tally.errors.lock().map(|e| e.clone()).unwrap_or_default();
    println!(
        "| {ETCD_UPGRADES} upgrades of a worker on etcd, then its old leases lapse | {sent} | {} | instance key never deleted (create_revision {created} throughout; lease moved {} times); edge lost the instance in {} of {} samples; {:?} in all |",
        failed + refused,
        leases.windows(2).filter(|w| w[0] != w[1]).count(),
        misses.load(Ordering::SeqCst),
        samples.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert_eq!((failed, refused), (0, 0), "errors: {errors:?}");
    assert_eq!(
        after_ttl, created,
        "the instance key went with an old lease"
    );
    assert_eq!(
        node_after, node_created,
        "the node key went with an old lease"
    );
    assert_eq!(
        misses.load(Ordering::SeqCst),
        0,
        "the edge lost the instance"
    );
    assert!(samples.load(Ordering::SeqCst) > 100);
    assert_ne!(
        last_lease, first_lease,
        "the new process's lease holds the keys"
    );
    worker.signal(libc::SIGTERM);
    assert_eq!(exited(&mut worker, "the worker stops").await, Some(0));
}
