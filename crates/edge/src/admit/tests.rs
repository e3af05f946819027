//! The edge's admission on tokio's paused clock: the app's queue (full, timed out, woken by a
//! release), placement's exclusion of instances already tried, and ejected outliers as the
//! last resort.

use super::*;
use anyedge_catalog::{LiveRegistry, Snapshot};
use anyedge_telemetry::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// App `a`: `instances` instances on this node, each taking one request at a time, its own
/// budget `max_inflight`, a queue of `queue` waiting at most a second.
fn app(instances: usize, max_inflight: u32, queue: u32) -> (Arc<AppEntry>, Arc<Metrics>) {
    let mut toml = format!(
        r#"
[[apps]]
name = "a"
limits = {{ max_inflight = {max_inflight}, queue = {queue}, queue_timeout = "1s" }}
concurrency = {{ type = "requests", soft_limit = 1, hard_limit = 1 }}
[[apps.services]]
internal_port = 80
ports = [ {{ port = 8080, handlers = ["http"] }} ]
"#
    );
    for i in 0..instances {
        toml += &format!("[[apps.instances]]\nid = \"i{i}\"\naddress = \"127.0.0.1\"\n");
    }
    let config = anyedge_config::parse(&toml, "t.toml").unwrap_or_else(|d| panic!("{d}"));
    let snapshot = Snapshot::build(Arc::new(config), &LiveRegistry::new(), None);
    let app = snapshot.app("a").expect("app a").clone();
    (app, Metrics::new())
}

/// The app's `anyedge_queued_total` (requests that had to wait), from its metrics text.
fn queued(metrics: &Metrics) -> u64 {
    let text = metrics.render_app("a");
    let line = text
        .lines()
        .find(|l| l.starts_with("anyedge_queued_total{"))
        .unwrap_or_else(|| panic!("no queued count in:\n{text}"));
    let count = line.rsplit(' ').next().expect("a value");
    count.parse().expect("a count")
}

/// Let spawned tasks run until `done` holds (the clock does not move: this task stays ready).
async fn settle(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("spawned tasks did not get there");
}

const NO_CONSTRAINTS: Constraints<'static> = Constraints {
    force_regions: &[],
    prefer_regions: &[],
    force_instance: None,
    prefer_instance: None,
};

#[tokio::test(start_paused = true)]
async fn a_request_waits_in_the_queue_until_its_deadline() {
    let (app, node_metrics) = app(1, 1, 1);
    let metrics = node_metrics.app("a");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(1);
    let _held = admit_app(&app, deadline, &metrics).await.expect("free");
    let waited = admit_app(&app, deadline, &metrics).await;
    assert_eq!(waited.err(), Some(AdmitError::QueueTimeout));
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "until the deadline"
    );
    assert_eq!(app.live.waiting(), 0, "the ticket was given back");
    assert_eq!(queued(&node_metrics), 1);
    // A deadline already past is one look and no wait, and is not counted as queued.
    let late = admit_app(&app, start, &metrics).await;
    assert_eq!(late.err(), Some(AdmitError::QueueTimeout));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(queued(&node_metrics), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once_and_a_release_admits_the_waiter_at_once() {
    let (app, node_metrics) = app(1, 1, 1);
    let metrics = node_metrics.app("a");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(1);
    let held = admit_app(&app, deadline, &metrics).await.expect("free");
    let waiter = tokio::spawn({
        let (app, metrics) = (app.clone(), metrics.clone());
        async move { admit_app(&app, deadline, &metrics).await.map(drop) }
    });
    settle(|| app.live.waiting() == 1).await;
    let refused = admit_app(&app, deadline, &metrics).await;
    assert_eq!(refused.err(), Some(AdmitError::Overloaded), "queue of one");
    assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
    assert_eq!(queued(&node_metrics), 1, "only the waiter was queued");
    drop(held);
    assert_eq!(waiter.await.expect("waiter"), Ok(()));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "woken by the release, not by the periodic look"
    );
    assert_eq!(app.live.waiting(), 0);
    assert_eq!(
        app.live.inflight.in_use(),
        0,
        "the waiter's slot went with it"
    );
}

#[tokio::test(start_paused = true)]
async fn an_app_without_a_queue_refuses_at_once() {
    let (app, node_metrics) = app(1, 1, 0);
    let metrics = node_metrics.app("a");
    let deadline = Instant::now() + Duration::from_secs(1);
    let _held = admit_app(&app, deadline, &metrics).await.expect("free");
    assert_eq!(
        admit_app(&app, deadline, &metrics).await.err(),
        Some(AdmitError::Overloaded)
    );
    assert_eq!(app.live.waiting(), 0);
    assert_eq!(queued(&node_metrics), 0);
}

#[tokio::test(start_paused = true)]
async fn placement_skips_tried_instances_and_is_unavailable_once_all_are() {
    let (app, node_metrics) = app(3, 100, 10);
    let metrics = node_metrics.app("a");
    let deadline = Instant::now() + Duration::from_secs(1);
    let try_place =
        |tried: &'static [bool]| place(&app, &NO_CONSTRAINTS, tried, deadline, &metrics, None);
    for _ in 0..50 {
        let placed = try_place(&[true, false, true]).await.expect("i1 is left");
        assert_eq!(placed.index, 1);
        assert!(!placed.preference_unmet);
        assert_eq!(app.instances[1].live.inflight.in_use(), 1, "its slot");
    }
    let start = Instant::now();
    let all = try_place(&[true, true, true]).await;
    assert_eq!(all.err(), Some(AdmitError::Unavailable));
    assert_eq!(start.elapsed(), Duration::ZERO, "nothing to wait for");
    // The one left unhealthy: nothing either.
    let _failing = app.instances[1].live.check_failing();
    let none = try_place(&[true, false, true]).await;
    assert_eq!(none.err(), Some(AdmitError::Unavailable));
    // A forced instance already tried.
    let forced = Constraints {
        force_instance: Some(0),
        ..NO_CONSTRAINTS
    };
    let tried = [true, false, false];
    let placed = place(&app, &forced, &tried, deadline, &metrics, None).await;
    assert_eq!(placed.err(), Some(AdmitError::ForcedUnavailable));
}

#[tokio::test(start_paused = true)]
async fn placement_waits_while_every_untried_instance_is_full() {
    let (app, node_metrics) = app(2, 100, 10);
    let metrics = node_metrics.app("a");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(1);
    let untried = [false, false];
    let first = place(&app, &NO_CONSTRAINTS, &untried, deadline, &metrics, None).await;
    let second = place(&app, &NO_CONSTRAINTS, &untried, deadline, &metrics, None).await;
    let (first, second) = (first.expect("one free"), second.expect("the other"));
    assert_ne!(first.index, second.index);
    let mut trace = String::new();
    let full = place(
        &app,
        &NO_CONSTRAINTS,
        &untried,
        deadline,
        &metrics,
        Some(&mut trace),
    )
    .await;
    assert_eq!(full.err(), Some(AdmitError::QueueTimeout));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(
        trace.starts_with("chosen=none; why=all_at_hard_limit"),
        "{trace}"
    );
    // A waiter that tried instance 1: its release does not admit it, instance 0's does.
    let deadline = Instant::now() + Duration::from_secs(1);
    let (zero, one) = if first.index == 0 {
        (first, second)
    } else {
        (second, first)
    };
    let started = Instant::now();
    let waiter = tokio::spawn({
        let (app, metrics) = (app.clone(), metrics.clone());
        async move {
            let tried = [false, true];
            let placed = place(&app, &NO_CONSTRAINTS, &tried, deadline, &metrics, None).await;
            placed.map(|p| p.index)
        }
    });
    settle(|| app.live.waiting() == 1).await;
    drop(one);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished(), "instance 1 is excluded for it");
    assert_eq!(app.live.waiting(), 1);
    drop(zero);
    assert_eq!(waiter.await.expect("waiter"), Ok(0));
    assert_eq!(started.elapsed(), Duration::ZERO, "woken by the release");
}

#[tokio::test(start_paused = true)]
async fn an_ejected_outlier_is_skipped_unless_nothing_else_is_left() {
    let (app, node_metrics) = app(2, 100, 10);
    let metrics = node_metrics.app("a");
    let deadline = Instant::now() + Duration::from_secs(1);
    let policy = &app.config.outlier;
    let now = std::time::Instant::now();
    for _ in 0..policy.consecutive_failures {
        app.instances[0].live.outlier.failed(now, policy);
    }
    assert!(app.instances[0].live.outlier.ejected(now));
    let mut trace = String::new();
    for _ in 0..20 {
        let placed = place(
            &app,
            &NO_CONSTRAINTS,
            &[false, false],
            deadline,
            &metrics,
            Some(&mut trace),
        )
        .await
        .expect("i1 takes it");
        assert_eq!(placed.index, 1, "{trace}");
    }
    assert!(trace.contains("i0@local ~1.0ms 0/1/1 ejected"), "{trace}");
    assert!(!trace.contains("last_resort"), "{trace}");
    // i1 tried already: the ejected one is all that is left, so it is the last resort.
    let placed = place(
        &app,
        &NO_CONSTRAINTS,
        &[false, true],
        deadline,
        &metrics,
        Some(&mut trace),
    )
    .await
    .expect("the last resort");
    assert_eq!(placed.index, 0);
    assert!(
        trace.starts_with("chosen=i0; why=nearest_region backing_off; preference_unmet=false; last_resort=ejected"),
        "{trace}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_already_past_takes_no_place_in_the_queue() {
    let (app, node_metrics) = app(1, 1, 4);
    let metrics = node_metrics.app("a");
    let now = Instant::now();
    let _held = admit_app(&app, now + Duration::from_secs(1), &metrics)
        .await
        .expect("free");
    let refused = admit_app(&app, now, &metrics).await.err();
    assert_eq!(refused, Some(AdmitError::QueueTimeout));
    assert_eq!(Instant::now(), now, "no wait");
    assert_eq!(queued(&node_metrics), 0, "not counted as queued");
}
