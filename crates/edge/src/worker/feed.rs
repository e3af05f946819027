//! The load feed, the worker's side: every edge this node serves follows, on a long-lived HTTP/2
//! stream of its backhaul, how loaded and healthy this node's instances are. One task makes the
//! frame every [`TICK`] for all edges; each edge's stream sends it when it changed, and again
//! after [`HEARTBEAT`] without a change, in the version the edge asked for (version 2 adds the
//! power state of instances with a driver). The format and the edge's side:
//! `crate::backhaul::feed`.

use crate::Shared;
use anyedge_backhaul::feed;
use anyedge_catalog::{PowerState, Snapshot};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub(crate) const TICK: Duration = Duration::from_millis(250);
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// The current frame, in both versions, for every instance this node runs.
pub(crate) fn frame(snapshot: &Snapshot, v1: &mut String, v2: &mut String) {
    v1.clear();
    v2.clear();
    let now = Instant::now();
    let mut apps: Vec<_> = snapshot.apps.values().collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    for app in apps {
        let hard = app.config.concurrency.hard_limit;
        for i in app.instances.iter().filter(|i| i.peer.is_none()) {
            let inflight = i.live.inflight.in_use();
            // An outlier ejected here (or its probe in flight) is out for every edge too.
            let healthy = i.live.healthy(now) && !i.live.outlier_held(now);
            let power = &i.live.power;
            let id = i.id.as_str();
            // Version 1: an instance that is not running is unhealthy (its edge cannot start it).
            feed::write_line(v1, id, inflight, hard, healthy && power.running());
            let state = power.driven().then(|| state(power.state()));
            feed::write_line_with(v2, id, inflight, hard, healthy, state);
        }
    }
    feed::end_frame(v1);
    feed::end_frame(v2);
}

fn state(s: PowerState) -> feed::State {
    match s {
        PowerState::Running => feed::State::Running,
        PowerState::Starting => feed::State::Starting,
        PowerState::Stopping => feed::State::Stopping,
        PowerState::Stopped => feed::State::Stopped,
        PowerState::Failed => feed::State::Failed,
    }
}

/// The frame in each version, made together: version 1, then version 2.
pub(crate) type Frames = [Bytes; 2];

/// The frame in `version` (version 2 for any later one).
fn version(frames: &Frames, version: u8) -> &Bytes {
    &frames[usize::from(version >= 2)]
}

/// The frames of this node, made once every [`TICK`] by one task for every edge
/// that follows them, and published when they change.
pub(crate) fn frames(shared: &Arc<Shared>) -> watch::Receiver<Frames> {
    shared
        .backhaul
        .frames
        .get_or_init(|| {
            let (tx, rx) = watch::channel(Frames::default());
            let shared = shared.clone();
            tokio::spawn(async move {
                let (mut v1, mut v2) = (String::new(), String::new());
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    if let Some(snapshot) = shared.routes.load().snapshot.clone() {
                        frame(&snapshot, &mut v1, &mut v2);
                        tx.send_if_modified(|f| {
                            // Version 2 says all version 1 says, and more.
                            let changed = f[1].as_ref() != v2.as_bytes();
                            if changed {
                                f[0] = Bytes::copy_from_slice(v1.as_bytes());
                                f[1] = Bytes::copy_from_slice(v2.as_bytes());
                            }
                            changed
                        });
                    }
                }
            });
            rx
        })
        .clone()
}

/// The body of one edge's feed stream: each new frame, and the current one again
/// after [`HEARTBEAT`] without a change, until the edge goes away or this node drains. Ended
/// at the drain, the stream no longer holds the backhaul connection open after its GOAWAY
/// (which waits for every stream): the connection closes once its requests are answered, and
/// the edge follows the feed again on a new connection (after an upgrade, to the new process
/// at the same address) instead of losing this one when the grace period runs out.
pub(crate) fn stream(shared: &Arc<Shared>, version: u8) -> FeedBody {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let mut frames = frames(shared);
    let shared = shared.clone();
    tokio::spawn(async move {
        let draining = shared.drain.started();
        tokio::pin!(draining);
        let leaving = shared.backhaul.leaving.started();
        tokio::pin!(leaving);
        loop {
            if shared.backhaul.leaving.is_draining() {
                return;
            }
            let data = self::version(&frames.borrow_and_update(), version).clone();
            if !data.is_empty() && tx.send(data).await.is_err() {
                return;
            }
            tokio::select! {
                changed = frames.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = tx.closed() => return,
                _ = &mut draining => return,
                _ = &mut leaving => return,
            }
        }
    });
    FeedBody { rx }
}

/// The feed's response body: frames as the producing task makes them.
pub(crate) struct FeedBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl http_body::Body for FeedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}
