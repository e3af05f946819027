//! The load feed, the worker's side: every edge this node serves follows, on a long-lived HTTP/2
//! stream of its backhaul, how loaded and healthy this node's instances are. One task makes the
//! frame every [`TICK`] for all edges; each edge's stream sends it when it changed, and again
//! after [`HEARTBEAT`] without a change. The format and the edge's side: `crate::backhaul::feed`.

use crate::Shared;
use anyedge_backhaul::feed;
use anyedge_catalog::Snapshot;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub(crate) const TICK: Duration = Duration::from_millis(250);
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// The current frame for every instance this node runs.
pub(crate) fn frame(snapshot: &Snapshot, out: &mut String) {
    out.clear();
    let now = Instant::now();
    let mut apps: Vec<_> = snapshot.apps.values().collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    for app in apps {
        let hard = app.config.concurrency.hard_limit;
        for i in app.instances.iter().filter(|i| i.peer.is_none()) {
            let inflight = i.live.inflight.in_use();
            // An outlier ejected here (or its probe in flight) is out for every edge too; so is
            // an instance this node stopped (docs/on-demand.md: edges cannot start it yet).
            let healthy =
                i.live.healthy(now) && !i.live.outlier_held(now) && i.live.power.running();
            feed::write_line(out, i.id.as_str(), inflight, hard, healthy);
        }
    }
    feed::end_frame(out);
}

/// The frames of this node, made once every [`TICK`] by one task for every edge
/// that follows them, and published when they change.
pub(crate) fn frames(shared: &Arc<Shared>) -> watch::Receiver<Bytes> {
    shared
        .backhaul
        .frames
        .get_or_init(|| {
            let (tx, rx) = watch::channel(Bytes::new());
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut text = String::new();
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    if let Some(snapshot) = shared.routes.load().snapshot.clone() {
                        frame(&snapshot, &mut text);
                        tx.send_if_modified(|f| {
                            let changed = f.as_ref() != text.as_bytes();
                            if changed {
                                *f = Bytes::copy_from_slice(text.as_bytes());
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
pub(crate) fn stream(shared: &Arc<Shared>) -> FeedBody {
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
            let data = frames.borrow_and_update().clone();
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
