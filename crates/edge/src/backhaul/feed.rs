//! The load feed, the edge's side: a worker tells each edge it serves, on a long-lived HTTP/2
//! stream of its backhaul, how loaded and healthy its instances are; the edge folds that into placement
//! (`InstanceLive::report`: the worker's count is the truth, since it counts every edge).
//!
//! Wire format (`anyedge_backhaul::feed`; the response body of a `GET /` stream marked with
//! [`super::FEED`], whose value `load 2` asks for version 2): frames of text lines, one per
//! instance the worker runs, `<app>/<instance> <in-flight> <hard-limit> <healthy 0|1>
//! [<state>]` (the power state of an instance with a driver on the worker, which this edge
//! follows: `super::start`), each frame ended by an empty line. A frame goes out every `TICK` when
//! anything changed, and at least every `HEARTBEAT` (a report expires after
//! `anyedge_catalog::REPORT_FRESH`). A line this edge cannot read is skipped.

use super::link::Link;
use crate::instance::body::ReqBody;
use crate::Shared;
use anyedge_backhaul::feed::{FeedReader, Frame, State};
use anyedge_catalog::{PowerState, Reported, Snapshot};
use http::{Method, Request, Version};
use http_body_util::BodyExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// The instances each worker listed in its latest load-feed frame, while its feed is open: what
/// the catalog's grace rule asks about an instance that left the catalog with its worker's lease
/// (`anyedge_store::state::grace`), which the snapshot (and so [`apply`]) no longer names.
#[derive(Default)]
pub(crate) struct Reports {
    by_peer: Mutex<HashMap<Arc<str>, LastFrame>>,
}

struct LastFrame {
    /// `<app>/<instance>` of each line of the latest frame.
    instances: HashSet<String>,
    at: Instant,
}

impl Reports {
    /// A frame came from `peer`.
    fn frame(&self, peer: &Arc<str>, frame: &Frame<'_>, now: Instant) {
        let instances = frame
            .entries
            .iter()
            .map(|e| format!("{}/{}", e.app, e.instance))
            .collect();
        let mut by_peer = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        by_peer.insert(peer.clone(), LastFrame { instances, at: now });
    }

    /// The feed from `peer` ended: it reports nothing until it is followed again.
    fn ended(&self, peer: &str) {
        let mut by_peer = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        by_peer.remove(peer);
    }

    /// Whether `peer` reports `instance` (`<app>/<id>`) on an open feed whose latest frame is
    /// at most [`anyedge_catalog::REPORT_SILENT`] old.
    pub fn reports(&self, peer: &str, instance: &str, now: Instant) -> bool {
        let by_peer = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        by_peer.get(peer).is_some_and(|r| {
            now.saturating_duration_since(r.at) <= anyedge_catalog::REPORT_SILENT
                && r.instances.contains(instance)
        })
    }
}

/// Apply one frame's lines to the instances of the snapshot in force; returns how many were
/// applied (lines it cannot read, and instances it does not reach over backhaul, are skipped).
pub(crate) fn apply(snapshot: &Snapshot, frame: &Frame<'_>, now: Instant) -> usize {
    let mut applied = 0;
    for e in &frame.entries {
        let Some(entry) = snapshot.app(e.app) else {
            continue;
        };
        // Only instances this edge reaches over backhaul: the worker is their truth.
        let found = entry
            .instance_index(e.instance)
            .map(|i| &entry.instances[i]);
        if let Some(inst) = found.filter(|i| i.peer.is_some()) {
            let (inflight, mut healthy) = (e.inflight, e.healthy);
            let remote = inst.live.power.remote();
            if !remote && e.state.is_some_and(|s| s != State::Running) {
                // A driven instance this edge cannot start (its catalog names no driver): out
                // of placement while it does not run, as version 1 said with `healthy 0`.
                healthy = false;
            }
            inst.live.report(Reported { inflight, healthy }, now);
            if remote {
                // No state: the worker runs it without a driver (or speaks version 1).
                let state = e.state.map_or(PowerState::Running, power_state);
                inst.live.power.report(state, now);
            }
            applied += 1;
        }
    }
    applied
}

fn power_state(s: State) -> PowerState {
    match s {
        State::Running => PowerState::Running,
        State::Starting => PowerState::Starting,
        State::Stopping => PowerState::Stopping,
        State::Stopped => PowerState::Stopped,
        State::Failed => PowerState::Failed,
    }
}

/// Edge side: follow a worker's feed for as long as the link is in use, reopening the stream
/// after a failure.
pub(crate) fn follow(link: Weak<Link>, shared: Arc<Shared>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(l) = link.upgrade() else { return };
            let peer = l.id().clone();
            let timeout = shared.routes.load().limits.connect_timeout;
            let started = Instant::now();
            let result = match l.sender(&shared, timeout).await {
                Ok(sender) => {
                    drop(l);
                    let result = read(sender, &shared, &peer).await;
                    shared.backhaul.reports.ended(&peer);
                    result
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "load feed interrupted");
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(200);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shared.drain.started() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

async fn read(conn: super::streams::Conn, shared: &Shared, peer: &Arc<str>) -> Result<(), String> {
    let mut req = Request::new(ReqBody::<crate::instance::body::ClientBody>::Empty);
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() = http::Uri::from_static("http://anyedge/");
    let version = anyedge_backhaul::stream::FEED_VALUE_V2;
    req.headers_mut()
        .insert(super::FEED, http::HeaderValue::from_static(version));
    let resp = match conn.send(req).await {
        Ok(resp) => resp,
        Err(super::streams::SendFailed::Unsent) => return Err("the connection closed".into()),
        Err(super::streams::SendFailed::Failed(e)) => return Err(e.to_string()),
    };
    if !resp.status().is_success() {
        return Err(format!("worker answered {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut reader = FeedReader::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        reader.push(&data);
        while let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? {
            let now = Instant::now();
            shared.backhaul.reports.frame(peer, &frame, now);
            if let Some(snapshot) = shared.routes.load().snapshot.clone() {
                apply(&snapshot, &frame, now);
            }
        }
    }
    Err("the worker ended the load feed".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::feed::frame;
    use anyedge_backhaul::feed::parse_frame;

    fn parse(text: &str) -> Frame<'_> {
        parse_frame(text.as_bytes())
    }
    use anyedge_catalog::LiveRegistry;

    const APP: &str = r#"
[[apps]]
name = "a"
[[apps.services]]
internal_port = 80
ports = [ { port = 8080, handlers = ["http"] } ]
[[apps.instances]]
id = "i1"
address = "127.0.0.1"
NODE
"#;

    fn snapshot(node_file: &str) -> Snapshot {
        let config = anyedge_config::parse(node_file, "test.toml").expect("valid");
        Snapshot::build(Arc::new(config), &LiveRegistry::new(), None)
    }

    #[test]
    fn a_workers_frame_reaches_the_edges_view_of_the_same_instance() {
        let worker = snapshot(&APP.replace("NODE", ""));
        let edge = snapshot(&format!(
            "[node]\nid = \"e\"\n[cluster]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[nodes]]\nid = \"w\"\nadvertise = \"127.0.0.1:1\"\n{}",
            APP.replace("NODE", "node = \"w\"")
        ));
        let w = &worker.app("a").expect("app").instances[0];
        let _a = w.live.inflight.try_acquire(100);
        let _b = w.live.inflight.try_acquire(100);
        let (mut text, mut v2) = (String::new(), String::new());
        frame(&worker, &mut text, &mut v2);
        assert_eq!(
            text, "a/i1 2 25 1\n\n",
            "in flight, hard limit (default 25), healthy"
        );
        assert_eq!(v2, text, "no driver: no state in version 2 either");
        let now = Instant::now();
        assert_eq!(apply(&edge, &parse(&text), now), 1);
        let e = &edge.app("a").expect("app").instances[0];
        assert_eq!(e.live.load(now), 2);
        // The worker's own view is never overwritten by a frame (it is the truth for it).
        assert_eq!(apply(&worker, &parse("a/i1 9 10 0\n"), now), 0);
        // Lines it cannot read are skipped, the rest applied.
        assert_eq!(
            apply(
                &edge,
                &parse("garbage\na/i1 x 1 1\na/i1 5 10 0\nb/zz 1 1 1\n"),
                now
            ),
            1
        );
        assert!(!e.live.healthy(now));
    }

    #[test]
    fn the_power_state_of_a_driven_instance_travels_in_version_2_only() {
        let driver = "driver = { type = \"command\", start = \"true\", stop = \"true\" }";
        let worker = snapshot(&APP.replace("NODE", driver));
        let edge = snapshot(&format!(
            "[node]\nid = \"e\"\n[cluster]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[nodes]]\nid = \"w\"\nadvertise = \"127.0.0.1:1\"\n{}",
            APP.replace("NODE", &format!("node = \"w\"\n{driver}"))
        ));
        let w = &worker.app("a").expect("app").instances[0];
        w.live.power.set(PowerState::Stopped);
        let (mut v1, mut v2) = (String::new(), String::new());
        frame(&worker, &mut v1, &mut v2);
        assert_eq!(v1, "a/i1 0 25 0\n\n", "version 1: not running is unhealthy");
        assert_eq!(
            v2, "a/i1 0 25 1 stopped\n\n",
            "version 2: healthy, and stopped"
        );
        let e = &edge.app("a").expect("app").instances[0];
        assert!(edge.app("a").expect("app").on_demand && e.live.power.remote());
        assert!(e.live.power.running(), "until its worker says");
        let now = Instant::now();
        assert_eq!(apply(&edge, &parse(&v2), now), 1);
        assert_eq!(e.live.power.state(), PowerState::Stopped);
        assert!(e.live.healthy(now));
        // A version-1 line says nothing of power: running (its health says the rest).
        apply(&edge, &parse(&v1), now);
        assert!(e.live.power.running() && !e.live.healthy(now));
        // An edge whose catalog names no driver for it cannot start it: a state other than
        // running keeps it out, as version 1's `healthy 0` did.
        let plain = snapshot(&format!(
            "[node]\nid = \"e\"\n[cluster]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[nodes]]\nid = \"w\"\nadvertise = \"127.0.0.1:1\"\n{}",
            APP.replace("NODE", "node = \"w\"")
        ));
        let p = &plain.app("a").expect("app").instances[0];
        apply(&plain, &parse(&v2), now);
        assert!(p.live.power.running() && !p.live.healthy(now));
        apply(&plain, &parse("a/i1 0 25 1 running\n"), now);
        assert!(p.live.healthy(now));
    }
}
