//! Node churn costs the others nothing (issue 21, item 5), with a real etcd and real processes
//! on loopback: two edges and two workers run an app; another edge joins and leaves, then
//! another worker joins and leaves. Reloads are read from each node's `/metrics`
//! (`anyedge_config_reloads_total`): no node reloads for the edge, the workers do not reload
//! for the worker, and the edges, which route to the new worker's instance, take it in with one
//! reload each, send it requests, and stop when it leaves.

use anyedge_test_support::cluster::{get, get_with, local, metric, Node, Pki};
use anyedge_test_support::etcd::Etcd;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::{eventually, free_port};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

const RELOADS: &str = "anyedge_config_reloads_total{result=\"ok\"}";

/// How long after every node has seen a change a reload it caused could still be on its way:
/// ten times the 50 ms a node may hold a burst of catalog events. Only a test that nothing happened waits
/// for it; everything else polls with a deadline.
const SETTLE: Duration = Duration::from_millis(500);

fn edge_toml(pki: &Pki, etcd: &Etcd, id: &str) -> String {
    format!(
        "[node]\nid = \"{id}\"\nregion = \"ord\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n",
        pki.cluster_section(id),
        etcd.url()
    )
}

/// A worker-only node running one instance of `web`.
fn worker_toml(pki: &Pki, etcd: &Etcd, id: &str, instance: &HttpInstance) -> String {
    let backhaul = free_port();
    format!(
        "[node]\nid = \"{id}\"\nregion = \"iad\"\nroles = [\"worker\"]\ndrain_timeout = \"1s\"\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n[[instances]]\napp = \"web\"\nid = \"{id}-a\"\naddress = \"{}\"\n",
        pki.cluster_section(id),
        etcd.url(),
        instance.addr
    )
}

fn put_web(etcd: &Etcd, dir: &Path, port: u16) {
    let file = dir.join("web.toml");
    std::fs::write(
        &file,
        format!("[[apps]]\nname = \"web\"\nhostnames = [\"web.test\"]\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"),
    )
    .expect("write apps file");
    let out = Command::new(bin())
        .args(["apps", "put", file.to_str().expect("utf-8")])
        .args(["--etcd", &etcd.url()])
        .output()
        .expect("run anyedge apps put");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn reloads(node: &Node) -> f64 {
    metric(&node.metrics().await, RELOADS)
}

async fn all_reloads(nodes: &[&Node]) -> Vec<f64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(reloads(n).await);
    }
    out
}

/// Wait until every node's catalog reflects etcd's current revision (each change up to it
/// applied, or found not to concern the node), then [`SETTLE`].
async fn settle(etcd: &Etcd, nodes: &[&Node]) {
    let revision = etcd.revision().expect("etcd revision") as f64;
    for n in nodes {
        eventually(
            &format!("{} at revision {revision}", n.name),
            Duration::from_secs(10),
            || async {
                (metric(&n.metrics().await, "anyedge_catalog_revision") >= revision).then_some(())
            },
        )
        .await;
    }
    tokio::time::sleep(SETTLE).await;
}

/// SIGTERM (the node revokes its lease and drains), and wait for the process to end.
async fn stop(node: &mut Node) {
    let Some(mut proc) = node.proc.take() else {
        return;
    };
    proc.signal(libc::SIGTERM);
    eventually(
        &format!("{} exits", node.name),
        Duration::from_secs(10),
        || {
            let code = proc.try_exit_code();
            async move { code }
        },
    )
    .await;
}

async fn knows_everywhere(edges: &[&Node], instance: &str, yes: bool) {
    for e in edges {
        eventually(
            &format!("{} knows {instance}: {yes}", e.name),
            Duration::from_secs(10),
            || async { (e.knows_instance("web", instance).await == yes).then_some(()) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_churn_reloads_only_the_edges_that_route_to_the_node() {
    let etcd = Etcd::start();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    put_web(&etcd, dir.path(), port);
    let (i1, i2, i3) = (
        HttpInstance::start("w1-a", false).await,
        HttpInstance::start("w2-a", false).await,
        HttpInstance::start("w3-a", false).await,
    );
    let w1 = Node::start(bin(), "w1", &worker_toml(&pki, &etcd, "w1", &i1));
    let w2 = Node::start(bin(), "w2", &worker_toml(&pki, &etcd, "w2", &i2));
    // Two edges on the same app port (SO_REUSEPORT): new connections are spread between them.
    let e1 = Node::start(bin(), "e1", &edge_toml(&pki, &etcd, "e1"));
    let e2 = Node::start(bin(), "e2", &edge_toml(&pki, &etcd, "e2"));
    for n in [&w1, &w2, &e1, &e2] {
        n.up().await;
    }
    let edges = [&e1, &e2];
    knows_everywhere(&edges, "w1-a", true).await;
    knows_everywhere(&edges, "w2-a", true).await;
    let fleet = [&e1, &e2, &w1, &w2];
    settle(&etcd, &fleet).await;
    let start = all_reloads(&fleet).await;

    // An edge joins and leaves: no other node routes to it, none reloads.
    let mut e3 = Node::start(bin(), "e3", &edge_toml(&pki, &etcd, "e3"));
    e3.up().await;
    knows_everywhere(&[&e3], "w1-a", true).await;
    settle(&etcd, &fleet).await;
    assert_eq!(
        all_reloads(&fleet).await,
        start,
        "reloads for an edge joining"
    );
    stop(&mut e3).await;
    settle(&etcd, &fleet).await;
    assert_eq!(
        all_reloads(&fleet).await,
        start,
        "reloads for an edge leaving"
    );

    // A worker joins: the edges route to its instance (one reload each), the workers do not.
    let mut w3 = Node::start(bin(), "w3", &worker_toml(&pki, &etcd, "w3", &i3));
    w3.up().await;
    knows_everywhere(&edges, "w3-a", true).await;
    // Forced requests until each edge has carried one to w3-a over backhaul.
    let served = |m: &str| {
        metric(
            m,
            "anyedge_edge_http_responses_total{app=\"web\",status=\"200\"}",
        )
    };
    let mut before = Vec::new();
    for e in edges {
        before.push(served(&e.metrics().await));
    }
    eventually(
        "each edge sends a request to w3-a",
        Duration::from_secs(10),
        || async {
            let force = [("anyedge-force-instance-id", "w3-a")];
            let (status, _, body) = get_with(local(port), "web.test", "/", &force).await?;
            assert_eq!((status, body.trim()), (200, "w3-a"));
            for (e, b) in edges.iter().zip(&before) {
                if served(&e.metrics().await) <= *b {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    settle(&etcd, &fleet).await;
    let joined = all_reloads(&fleet).await;
    assert_eq!(
        joined[2..],
        start[2..],
        "workers reloaded for a worker joining"
    );
    for i in 0..2 {
        assert_eq!(
            joined[i],
            start[i] + 1.0,
            "{}: one reload for w3",
            fleet[i].name
        );
    }
    assert!(i3.requests() >= 2);

    // The worker leaves: its instance gets no more requests, and the workers still do not
    // reload.
    stop(&mut w3).await;
    knows_everywhere(&edges, "w3-a", false).await;
    let left_with = i3.requests();
    for _ in 0..30 {
        let (status, body) = get(local(port), "web.test", "/").await.expect("an answer");
        assert_eq!(status, 200);
        assert!(["w1-a", "w2-a"].contains(&body.trim()), "{body}");
    }
    assert_eq!(
        i3.requests(),
        left_with,
        "requests reached the leaving worker's instance"
    );
    settle(&etcd, &fleet).await;
    let left = all_reloads(&fleet).await;
    assert_eq!(
        left[2..],
        start[2..],
        "workers reloaded for a worker leaving"
    );
    for i in 0..2 {
        assert_eq!(
            left[i],
            joined[i] + 1.0,
            "{}: one reload for w3 leaving",
            fleet[i].name
        );
    }
}
