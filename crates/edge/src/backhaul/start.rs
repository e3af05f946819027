//! A start request over backhaul, the edge's side (`docs/on-demand.md`, "Over backhaul"). An
//! instance with a driver on another node (its worker) has a power state on this edge: what
//! the worker's load feed says (`super::feed`). A request that needs it while it is stopped asks
//! for its start as it would on a single node, by the state's compare-and-swap from `stopped`
//! to `starting` (`crate::admit`): one start per instance across this edge's requests. One task
//! per such instance, made and ended by diffing snapshots, waits on that state and, when it is
//! `starting`, asks the worker on a stream of its own (`GET /` with
//! `anyedge-backhaul-start: <app> <instance>`); the worker starts it with its driver (one start
//! per instance however many edges ask) and answers when it is ready or failed. The answer sets
//! the state here at once, so the waiting requests are forwarded without waiting for the next
//! feed frame; a feed frame made before the answer cannot undo it (the state is held from the
//! ask until [`HOLD`] after the answer).

use super::link::Link;
use crate::instance::body::{ClientBody, ReqBody};
use crate::instance::headers::START;
use crate::Shared;
use anyedge_backhaul::stream::start_header;
use anyedge_catalog::{AppLive, InstanceLive, PowerState, Snapshot};
use anyedge_core::InstanceId;
use http::{HeaderValue, Method, Request, StatusCode, Version};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// Beyond `start_timeout`: the worker answers by then (its own bound is `start_timeout` and
/// one second); this bounds an answer that never comes (a worker that died mid-start).
const MARGIN: Duration = Duration::from_millis(1500);

/// After an answer, feed reports do not set the state for this long: a frame the worker made
/// before the start ended (every 250 ms) may arrive after the answer, on another connection.
pub(crate) const HOLD: Duration = Duration::from_millis(600);

/// The start-asking tasks of the instances with a driver on another node, in the snapshot in
/// force.
#[derive(Default)]
pub(crate) struct RemoteStarts {
    running: Mutex<HashMap<InstanceId, Running>>,
}

struct Running {
    /// The worker's backhaul address when the task was made: a move makes a new task.
    advertise: String,
    live: Arc<InstanceLive>,
    task: AbortHandle,
}

impl RemoteStarts {
    /// Put a snapshot's instances with a driver on another node in force; returns how many
    /// tasks were started.
    pub fn update(&self, snapshot: &Snapshot, shared: &Arc<Shared>) -> usize {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wanted = HashMap::new();
        for app in snapshot.apps.values().filter(|a| a.on_demand) {
            for inst in &app.instances {
                if let Some(peer) = inst.peer.as_ref().filter(|_| inst.live.power.remote()) {
                    wanted.insert(inst.id.clone(), (app, inst, peer));
                }
            }
        }
        running.retain(|id, r| {
            let keep = wanted.get(id).is_some_and(|(_, inst, peer)| {
                peer.advertise == r.advertise && Arc::ptr_eq(&inst.live, &r.live)
            });
            if keep {
                wanted.remove(id);
            } else {
                r.task.abort();
            }
            keep
        });
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("no runtime: starts over backhaul not followed");
            return 0;
        };
        let started = wanted.len();
        for (id, (app, inst, peer)) in wanted {
            let task = Task {
                link: shared.backhaul.link(peer),
                shared: Arc::downgrade(shared),
                app: app.name.clone(),
                app_live: app.live.clone(),
                instance: inst.id.instance().to_string(),
                live: inst.live.clone(),
            };
            let handle = runtime.spawn(task.run());
            let r = Running {
                advertise: peer.advertise.clone(),
                live: inst.live.clone(),
                task: handle.abort_handle(),
            };
            running.insert(id, r);
        }
        started
    }

    /// Stop every task (the node is stopping).
    pub fn stop(&self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, r) in running.drain() {
            r.task.abort();
        }
    }
}

impl Drop for RemoteStarts {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Task {
    link: Arc<Link>,
    /// Weak: the node's shared state holds the tasks' handles.
    shared: Weak<Shared>,
    app: Arc<str>,
    app_live: Arc<AppLive>,
    instance: String,
    live: Arc<InstanceLive>,
}

impl Task {
    /// Wait on the instance's state (no CPU while it does not change); ask for a start each
    /// time it becomes `starting`: a request here asked for one, or the feed says one is under
    /// way (asking then tells this edge the moment it ends).
    async fn run(self) {
        let Some(drain) = self.shared.upgrade().map(|s| {
            // The feed says its state before a request needs it.
            self.link.follow_early(&s);
            s.drain.clone()
        }) else {
            return;
        };
        let stopping = drain.started();
        tokio::pin!(stopping);
        let power = &self.live.power;
        let mut changes = power.subscribe();
        loop {
            changes.borrow_and_update();
            if power.state() == PowerState::Starting {
                self.ask().await;
                continue;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = &mut stopping => return,
            }
        }
    }

    async fn ask(&self) {
        let power = &self.live.power;
        power.hold(None);
        let began = Instant::now();
        let timeout = self.start_timeout() + MARGIN;
        let answer = tokio::time::timeout(timeout, self.request()).await;
        let now = Instant::now();
        let (app, instance, peer) = (&self.app, &self.instance, self.link.id());
        let ms = began.elapsed().as_millis() as u64;
        match answer {
            Ok(Ok(())) => {
                tracing::info!(%app, %instance, %peer, ms, "worker started the instance");
                power.started(now);
                // Requests queued behind full instances look again at once.
                self.app_live.wake_all();
            }
            Ok(Err(why)) => {
                tracing::warn!(%app, %instance, %peer, ms, %why, "start over backhaul failed");
                power.start_failed(now);
            }
            Err(_) => {
                tracing::warn!(%app, %instance, %peer, ms, "no answer to a start over backhaul within start_timeout");
                power.start_failed(now);
            }
        }
        power.hold(Some(now + HOLD));
    }

    fn start_timeout(&self) -> Duration {
        let Some(shared) = self.shared.upgrade() else {
            return Duration::ZERO;
        };
        let routes = shared.routes.load();
        let app = routes.snapshot.as_ref().and_then(|s| s.app(&self.app));
        app.map_or(Duration::from_secs(20), |a| {
            a.config.on_demand.start_timeout
        })
    }

    /// One start request and its answer: `Ok` when the worker says the instance is ready.
    async fn request(&self) -> Result<(), String> {
        let shared = self.shared.upgrade().ok_or("the node stopped")?;
        let connect = shared.routes.load().limits.connect_timeout;
        let conn = (self.link.sender(&shared, connect).await).map_err(|e| e.to_string())?;
        drop(shared);
        let mut req = Request::new(ReqBody::<ClientBody>::Empty);
        *req.method_mut() = Method::GET;
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = http::Uri::from_static("http://anyedge/");
        let value = HeaderValue::try_from(start_header(&self.app, &self.instance))
            .map_err(|_| "a name the header cannot carry".to_string())?;
        req.headers_mut().insert(START, value);
        let resp = match conn.send(req).await {
            Ok(resp) => resp,
            Err(super::streams::SendFailed::Unsent) => return Err("the connection closed".into()),
            Err(super::streams::SendFailed::Failed(e)) => return Err(e.to_string()),
        };
        match resp.status() {
            StatusCode::OK => Ok(()),
            status => {
                let retry_after = resp.headers().get(http::header::RETRY_AFTER);
                let after = retry_after.and_then(|v| v.to_str().ok()).unwrap_or("-");
                Err(format!("worker answered {status} (retry after {after})"))
            }
        }
    }
}
