//! A worker's upgrade: its backhaul listener is handed over with the rest, and requests that
//! reach it through an edge lose nothing while it is upgraded again and again.

mod handover;

use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use handover::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const WORKER_UPGRADES: usize = 5;

/// A worker's backhaul listener is handed over too, and requests that reach it through an edge
/// lose nothing: streams that reach the old worker before its GOAWAY are served there, the load
/// feed ends with the drain so the old connections close at once, and the edge sends a stream
/// the GOAWAY refused to the same worker on a new connection (the new process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_hands_its_backhaul_listener_over() {
    use anyedge_test_support::cluster::{Node, Pki};
    let pki = Pki::new();
    let inst = HttpInstance::start("alpha", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, backhaul, admin) = (free_port(), free_port(), local(free_port()));
    let control = dir.path().join("w1.sock");
    let app = format!(
        "[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {http_port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    let worker_config = dir.path().join("w1.toml");
    std::fs::write(
        &worker_config,
        format!(
            "[node]\nid = \"w1\"\nroles = [\"worker\"]\nthreads = 2\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\ndrain_timeout = \"10s\"\ncontrol_socket = \"{}\"\n{}{app}[[apps.instances]]\nid = \"real\"\naddress = \"{}\"\n",
            control.display(),
            pki.cluster_section("w1"),
            inst.addr
        ),
    )
    .expect("config");
    let edge = Node::start(bin(), "edge1", &format!(
        "[node]\nid = \"edge1\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[[nodes]]\nid = \"w1\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{app}[[apps.instances]]\nid = \"real\"\naddress = \"{}\"\nnode = \"w1\"\n",
        pki.cluster_section("edge1"),
        inst.addr
    ));
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

    let stop = Arc::new(AtomicBool::new(false));
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
    for n in 1..=WORKER_UPGRADES {
        let mut next = run(n, true);
        let (pid, c) = (next.pid(), control.clone());
        eventually("the new worker answers on its control socket", WAIT, || {
            let c = c.clone();
            async move { status(&c).filter(|s| s.0 == pid) }
        })
        .await;
        assert_eq!(exited(&mut worker, "the old worker drains").await, Some(0));
        let log =
            std::fs::read_to_string(dir.path().join(format!("w1-{n}.log"))).unwrap_or_default();
        let backhaul_line = log
            .lines()
            .find(|l| l.contains("backhaul listening"))
            .unwrap_or_default()
            .to_string();
        assert!(backhaul_line.contains("adopted=2"), "{log}");
        let before = tally.ok.load(Ordering::SeqCst);
        eventually(
            "requests go on over the new worker's backhaul",
            WAIT,
            || {
                let n = tally.ok.load(Ordering::SeqCst);
                async move { (n > before + 200).then_some(()) }
            },
        )
        .await;
        assert!(next.try_exit_code().is_none());
        worker = next;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let (sent, ok, failed, refused) = (
        tally.sent.load(Ordering::SeqCst),
        tally.ok.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.connect_errors.load(Ordering::SeqCst),
    );
    let logs: Vec<String> = edge
        .logs()
        .lines()
        .filter(|l| l.contains("status=5"))
        .take(5)
        .map(String::from)
        .chain((0..=WORKER_UPGRADES).flat_map(|n| {
            std::fs::read_to_string(dir.path().join(format!("w1-{n}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("refused") || l.contains("WARN") || l.contains("ERROR"))
                .map(|l| format!("w1-{n}: {l}"))
                .collect::<Vec<_>>()
        }))
        .collect();
    eprintln!("{WORKER_UPGRADES} worker upgrades: {sent} requests through the edge, {ok} answered, {failed} failed, {refused} connection errors");
    let errors = tally.errors.lock().map(|e| e.clone()).unwrap_or_default();
    assert_eq!(
        (failed, refused),
        (0, 0),
        "errors: {errors:?}; logs: {logs:#?}"
    );
    worker.signal(libc::SIGTERM);
    assert_eq!(exited(&mut worker, "the worker stops").await, Some(0));
}
