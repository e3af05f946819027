//! Links against an in-process worker: a node with the worker role applied from a config (its
//! backhaul listener on a loopback port, mutual TLS from a cluster CA made by
//! `anyedge_tls::cluster_ca`), and another node's state holding the link.

use super::*;
use crate::instance::connect::AttemptError;
use crate::Edge;
use anyedge_catalog::{AppEntry, LiveRegistry, Reported, Snapshot};
use anyedge_core::Drain;
use anyedge_telemetry::Metrics;
use anyedge_test_support::cluster::Pki;
use anyedge_test_support::eventually;
use anyedge_test_support::http_instance::HttpInstance;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;

/// Far longer than any step here takes: a failure must not wait for it.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on polling for what the link's background tasks do.
const DEADLINE: Duration = Duration::from_secs(10);

/// App `a` with its instance `i1`, whose address (and node) the caller appends.
const APP: &str = "[[apps]]\nname = \"a\"\nhostnames = [\"a.test\"]\n[[apps.services]]\ninternal_port = 1\nports = [ { port = 8080, handlers = [\"http\"] } ]\n[[apps.instances]]\nid = \"i1\"\n";

/// Each node has its own live state, as two processes would.
fn snapshot(toml: &str) -> Arc<Snapshot> {
    let config = anyedge_config::parse(toml, "node.toml").unwrap_or_else(|d| panic!("{d}"));
    Arc::new(Snapshot::build(
        Arc::new(config),
        &LiveRegistry::new(),
        None,
    ))
}

fn node() -> Edge {
    let limits = anyedge_config::Limits::default();
    Edge::new(Metrics::new(), Drain::new(), &limits, Vec::new()).expect("node")
}

/// Worker `w1` running `a`'s `i1` at `instance`: the node, its app, its backhaul address.
fn worker(pki: &Pki, instance: SocketAddr) -> (Edge, Arc<AppEntry>, SocketAddr) {
    let toml = format!(
        "[node]\nid = \"w1\"\nroles = [\"worker\"]\nbackhaul_listen = \"127.0.0.1:0\"\n{}{APP}address = \"{instance}\"\n",
        pki.cluster_section("w1")
    );
    let snapshot = snapshot(&toml);
    let node = node();
    assert!(node.apply(snapshot.clone()).is_empty());
    let addr = node.backhaul_addr().expect("backhaul listening");
    let app = snapshot.app("a").expect("app a").clone();
    (node, app, addr)
}

/// The node `e1` holding links to node `peer` at `advertise`, which runs `a`'s `i1`: its
/// snapshot applied (cluster certificates loaded, routes in force for the load feed), and its
/// app. Applied as a worker without `backhaul_listen`, it opens no socket (an edge would listen
/// on the app's port, and an app's port cannot be 0); links are the same whatever the role.
fn edge(pki: &Pki, peer: &str, advertise: &str) -> (Edge, Arc<AppEntry>) {
    let toml = format!(
        "[node]\nid = \"e1\"\nroles = [\"worker\"]\n{}[[nodes]]\nid = \"{peer}\"\nadvertise = \"{advertise}\"\n{APP}address = \"127.0.0.1\"\nnode = \"{peer}\"\n",
        pki.cluster_section("e1")
    );
    let snapshot = snapshot(&toml);
    let node = node();
    assert!(node.apply(snapshot.clone()).is_empty());
    assert!(node.listening().is_empty() && node.backhaul_addr().is_none());
    assert!(
        node.shared.backhaul.tls.load().is_some(),
        "cluster certificates"
    );
    let app = snapshot.app("a").expect("app a").clone();
    (node, app)
}

fn link_to(app: &AppEntry) -> Arc<Link> {
    Arc::new(Link::new(app.instances[0].peer.as_ref().expect("remote")))
}

/// `GET http://a.test/headers` for `a`'s `i1` from client 192.0.2.7 on `conn`.
async fn get(conn: &streams::Conn) -> (StatusCode, String) {
    let mut req = Request::new(ReqBody::<crate::instance::body::ClientBody>::Empty);
    *req.version_mut() = http::Version::HTTP_2;
    *req.uri_mut() = http::Uri::from_static("http://a.test/headers");
    req.headers_mut().insert(
        crate::backhaul::STREAM,
        HeaderValue::from_static("a i1 192.0.2.7 443 https 2"),
    );
    let resp = match conn.send(req).await {
        Ok(resp) => resp,
        Err(streams::SendFailed::Unsent) => panic!("the connection closed"),
        Err(streams::SendFailed::Failed(e)) => panic!("stream failed: {e}"),
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("utf-8"))
}

async fn open(link: &Arc<Link>, node: &Edge) -> Result<streams::Conn, UpstreamError> {
    link.sender(&node.shared, TIMEOUT).await
}

#[tokio::test]
async fn a_link_carries_requests_to_the_workers_instance_and_its_load_back() {
    let pki = Pki::new();
    let instance = HttpInstance::start("i1", false).await;
    let (worker, on_worker, addr) = worker(&pki, instance.addr);
    let (edge, on_edge) = edge(&pki, "w1", &addr.to_string());
    let link = link_to(&on_edge);
    let conn = open(&link, &edge)
        .await
        .unwrap_or_else(|e| panic!("link: {e}"));
    let (status, body) = get(&conn).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\nx-forwarded-for: 192.0.2.7\n"), "{body}");
    assert!(body.contains("\nvia: 2 anyedge\n"), "{body}");
    assert_eq!(instance.requests(), 1);
    assert_eq!(
        worker
            .shared
            .metrics
            .backhaul
            .streams
            .load(Ordering::Relaxed),
        1
    );

    // The next request takes an open connection and grows the set beside it.
    let again = open(&link, &edge).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&again).await.0, StatusCode::OK);
    let opened = &edge.shared.metrics.backhaul;
    eventually("the link's second connection", DEADLINE, || async {
        (opened.h2_connections.load(Ordering::Relaxed) == CONNECTIONS as i64).then_some(())
    })
    .await;
    assert_eq!(instance.requests(), 2);

    // The worker's count of its instance reaches the edge's view over the load feed.
    let held: Vec<_> = (0..3)
        .map(|_| on_worker.instances[0].live.try_take(10, &on_worker.live))
        .collect();
    assert!(held.iter().all(Option::is_some));
    let want = Reported {
        inflight: 3,
        healthy: true,
    };
    let live = &on_edge.instances[0].live;
    eventually("the worker's load on the edge", DEADLINE, || async {
        (live.reported(std::time::Instant::now()) == Some(want)).then_some(())
    })
    .await;
    assert_eq!(live.load(std::time::Instant::now()), 3);
}

#[tokio::test]
async fn a_link_to_a_dead_worker_fails_at_once() {
    let pki = Pki::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let (edge, on_edge) = edge(&pki, "w1", &addr.to_string());
    let peer = on_edge.instances[0].peer.as_ref().expect("remote");
    peer.live.rtt_us.store(1234, Ordering::Relaxed);
    let link = link_to(&on_edge);
    for attempt in 0..2 {
        // Bounded well below the connect timeout the link was given.
        let failed = tokio::time::timeout(Duration::from_secs(5), open(&link, &edge))
            .await
            .expect("fails without waiting for the connect timeout");
        match failed {
            Err(UpstreamError::Connect(AttemptError::Io { source, .. })) => {
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            Err(e) => panic!("attempt {attempt}: {e}"),
            Ok(_) => panic!("attempt {attempt}: a link to nothing opened"),
        }
    }
    assert_eq!(peer.live.rtt_us(), None, "an old RTT says nothing now");
    assert_eq!(
        edge.shared
            .metrics
            .backhaul
            .connections_opened
            .load(Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn a_link_opens_only_to_the_node_it_names_and_with_cluster_certificates() {
    let pki = Pki::new();
    let instance = HttpInstance::start("i1", false).await;
    let (_worker, _, addr) = worker(&pki, instance.addr);
    // The worker at that address is w1: its certificate does not name w2.
    let (wrong, on_wrong) = edge(&pki, "w2", &addr.to_string());
    match open(&link_to(&on_wrong), &wrong).await {
        Err(UpstreamError::Connect(AttemptError::Backhaul { peer, why })) => {
            assert_eq!(peer, "w2");
            assert!(why.starts_with("TLS"), "{why}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("w1 passed for w2"),
    }
    // A node without `[cluster]` has nothing to present.
    let (_, on_edge) = edge(&pki, "w1", &addr.to_string());
    let bare = node();
    match open(&link_to(&on_edge), &bare).await {
        Err(UpstreamError::Connect(AttemptError::Backhaul { why, .. })) => {
            assert_eq!(why, "no [cluster] certificates");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened without certificates"),
    }
    assert_eq!(instance.requests(), 0);
}
