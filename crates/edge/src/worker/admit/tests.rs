//! The worker's own admission: whose instance a stream names, draining, health, and the app's
//! and the instance's budgets on this node, for HTTP streams and raw TCP connections.

use super::*;
use crate::Edge;
use anyedge_catalog::LiveRegistry;
use anyedge_core::Drain;
use anyedge_telemetry::Metrics;
use std::sync::Arc;

/// Worker `w`: app `a` with its own instance `mine` and `theirs` run by node `other`; app `b`
/// with its own `b1`. `a`'s budget is 2 requests and 3 connections, its instances' hard limit
/// 10; `b`'s instances take 2 at most.
const NODE: &str = r#"
[node]
id = "w"
roles = ["worker"]
[cluster]
ca = "ca.pem"
cert = "c.pem"
key = "k.pem"
[[nodes]]
id = "other"
advertise = "127.0.0.1:1"
[[apps]]
name = "a"
limits = { max_inflight = 2, max_connections = 3 }
concurrency = { type = "requests", soft_limit = 1, hard_limit = 10 }
[[apps.services]]
internal_port = 80
ports = [ { port = 8080, handlers = ["http"] } ]
[[apps.instances]]
id = "mine"
address = "127.0.0.1"
[[apps.instances]]
id = "theirs"
address = "127.0.0.1"
node = "other"
[[apps]]
name = "b"
concurrency = { type = "requests", soft_limit = 1, hard_limit = 2 }
[[apps.services]]
internal_port = 80
ports = [ { port = 8081, handlers = ["http"] } ]
[[apps.instances]]
id = "b1"
address = "127.0.0.1"
"#;

fn snapshot() -> Snapshot {
    let config = anyedge_config::parse(NODE, "worker.toml").unwrap_or_else(|d| panic!("{d}"));
    Snapshot::build(Arc::new(config), &LiveRegistry::new(), None)
}

/// A node's shared state (in a runtime: its only shard is the current one).
fn node() -> Edge {
    let limits = anyedge_config::Limits::default();
    Edge::new(Metrics::new(), Drain::new(), &limits, Vec::new()).expect("edge state")
}

/// `own_instance`'s verdict as the index found, for comparing.
fn index_of(s: &Snapshot, app: Option<&str>, instance: &str) -> Result<usize, RefuseReason> {
    let app = app.and_then(|a| s.app(a)).map(|a| &**a);
    own_instance(Some(s), app, instance).map(|(_, i)| i)
}

#[test]
fn own_instance_tells_its_own_from_another_apps_and_unknown_ones() {
    let s = snapshot();
    let a = s.app("a").expect("app a");
    let (found, index) = own_instance(Some(&s), Some(a), "mine").expect("its own instance");
    assert!(std::ptr::eq(found, &**a), "the app asked for");
    assert_eq!(index, 0);
    // An instance this worker runs, but for another app: never carried across apps.
    assert_eq!(index_of(&s, Some("a"), "b1"), Err(RefuseReason::WrongApp));
    assert_eq!(index_of(&s, Some("b"), "mine"), Err(RefuseReason::WrongApp));
    assert_eq!(index_of(&s, None, "b1"), Err(RefuseReason::WrongApp));
    // Not this worker's: unknown, or the app's instance that another node runs.
    assert_eq!(
        index_of(&s, Some("a"), "nope"),
        Err(RefuseReason::UnknownInstance)
    );
    assert_eq!(
        index_of(&s, Some("a"), "theirs"),
        Err(RefuseReason::UnknownInstance),
        "an instance of the app on another node is not this worker's"
    );
    assert_eq!(
        index_of(&s, None, "nope"),
        Err(RefuseReason::UnknownInstance)
    );
    let no_snapshot = own_instance(None, None, "b1").map(|(_, i)| i);
    assert_eq!(no_snapshot, Err(RefuseReason::UnknownInstance));
}

#[tokio::test]
async fn an_unhealthy_instance_and_a_draining_node_take_no_work() {
    let (node, s) = (node(), snapshot());
    let shared = &node.shared;
    let a = s.app("a").expect("app a");
    assert_eq!(takes_work(shared, a, 0), Ok(()));
    let failing = a.instances[0].live.check_failing();
    assert_eq!(takes_work(shared, a, 0), Err(RefuseReason::Unhealthy));
    assert_eq!(admit(shared, a, 0).err(), Some(RefuseReason::Unhealthy));
    assert_eq!(admit_tcp(shared, a, 0).err(), Some(RefuseReason::Unhealthy));
    // Refusals keep no slot.
    assert_eq!(a.live.inflight.in_use(), 0);
    assert_eq!(a.live.connections.in_use(), 0);
    assert_eq!(a.instances[0].live.inflight.in_use(), 0);
    drop(failing);
    assert!(admit(shared, a, 0).is_ok(), "healthy again");
    assert!(admit_tcp(shared, a, 0).is_ok());

    shared.drain.start();
    assert_eq!(takes_work(shared, a, 0), Err(RefuseReason::Draining));
    assert_eq!(admit(shared, a, 0).err(), Some(RefuseReason::Draining));
    assert_eq!(admit_tcp(shared, a, 0).err(), Some(RefuseReason::Draining));
    let _failing = a.instances[0].live.check_failing();
    assert_eq!(
        admit(shared, a, 0).err(),
        Some(RefuseReason::Draining),
        "draining is said first"
    );
}

#[tokio::test]
async fn the_apps_request_budget_refuses_when_full_and_admits_once_a_slot_drops() {
    let (node, s) = (node(), snapshot());
    let a = s.app("a").expect("app a");
    let mut held: Vec<_> = (0..2)
        .map(|_| admit(&node.shared, a, 0).expect("within max_inflight = 2"))
        .collect();
    assert_eq!(
        admit(&node.shared, a, 0).err(),
        Some(RefuseReason::AppOverloaded)
    );
    assert_eq!(a.live.inflight.in_use(), 2);
    assert_eq!(
        a.instances[0].live.inflight.in_use(),
        2,
        "the refused request took no instance slot"
    );
    held.pop();
    assert_eq!(a.live.inflight.in_use(), 1, "both slots go with the guard");
    assert_eq!(a.instances[0].live.inflight.in_use(), 1);
    held.push(admit(&node.shared, a, 0).expect("a slot came free"));
}

#[tokio::test]
async fn the_instances_hard_limit_refuses_full_and_admits_once_a_slot_drops() {
    let (node, s) = (node(), snapshot());
    let b = s.app("b").expect("app b");
    let mut held: Vec<_> = (0..2)
        .map(|_| admit(&node.shared, b, 0).expect("within hard_limit = 2"))
        .collect();
    assert_eq!(inst_slot(b, 0).err(), Some(RefuseReason::Full));
    assert_eq!(admit(&node.shared, b, 0).err(), Some(RefuseReason::Full));
    assert_eq!(
        admit_tcp(&node.shared, b, 0).err(),
        Some(RefuseReason::Full)
    );
    assert_eq!(
        (b.live.inflight.in_use(), b.live.connections.in_use()),
        (2, 0),
        "the app slots taken for the refused ones were given back"
    );
    held.pop();
    held.push(admit(&node.shared, b, 0).expect("a slot came free"));
    assert_eq!(b.instances[0].live.inflight.in_use(), 2);
}

#[tokio::test]
async fn tcp_takes_the_apps_connection_budget_not_its_request_budget() {
    let (node, s) = (node(), snapshot());
    let a = s.app("a").expect("app a");
    let requests: Vec<_> = (0..2)
        .map(|_| admit(&node.shared, a, 0).expect("request"))
        .collect();
    assert_eq!(
        admit(&node.shared, a, 0).err(),
        Some(RefuseReason::AppOverloaded)
    );
    // The request budget is full; connections have a budget of their own (3).
    let mut conns: Vec<_> = (0..3)
        .map(|_| admit_tcp(&node.shared, a, 0).expect("within max_connections = 3"))
        .collect();
    assert_eq!(
        admit_tcp(&node.shared, a, 0).err(),
        Some(RefuseReason::AppOverloaded)
    );
    assert_eq!(a.live.connections.in_use(), 3);
    assert_eq!(a.live.inflight.in_use(), 2);
    assert_eq!(
        a.instances[0].live.inflight.in_use(),
        5,
        "both count against the instance"
    );
    conns.pop();
    conns.push(admit_tcp(&node.shared, a, 0).expect("a connection slot came free"));
    drop(requests);
    assert_eq!(a.live.connections.in_use(), 3, "connections untouched");
    let _again = admit(&node.shared, a, 0).expect("request budget free again");
}
