//! A start request over backhaul, the worker's side (`docs/on-demand.md`, "Over backhaul"): an
//! edge whose requests need a stopped instance of this node asks for its start on a stream of
//! its own (`anyedge-backhaul-start: <app> <instance>`). The worker asks its driver task for the
//! start as its own requests do (the power state's compare-and-swap: one start per instance,
//! however many edges ask and whatever this node's own requests do), waits for the end, and
//! answers 200 when the instance is ready, or 503 with `Retry-After` when the start failed or
//! was not ready within `start_timeout` (and one second). The edge's waiting requests are then
//! forwarded as usual, or answered `instance_start_failed`.

use crate::instance::body::RespBody;
use crate::Shared;
use anyedge_backhaul::retry::RetryElsewhere;
use anyedge_backhaul::stream::parse_start;
use anyedge_catalog::PowerState;
use http::{HeaderValue, Response, StatusCode};
use std::time::{Duration, Instant};

/// Beyond `start_timeout`: the driver task ends a start by then; this bounds a wait on a
/// start nobody drives (as a request waiting on this node is bounded).
const MARGIN: Duration = Duration::from_secs(1);
/// Rounds of "ask, wait": a stop under way when asked, then the start.
const ROUNDS: usize = 4;

/// How a start request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Ready,
    /// Failed (the driver failed, not ready in time, or in its backoff): try again after this.
    Failed(Duration),
}

/// The answer to a start request whose [`crate::instance::headers::START`] value is `value`.
pub(super) async fn answer(shared: &Shared, value: &HeaderValue, edge: &str) -> Response<RespBody> {
    let parsed = value.to_str().ok().and_then(parse_start);
    let Some((app, instance)) = parsed else {
        return super::http::refuse(shared, RetryElsewhere::BadRequest);
    };
    let (entry, index) = {
        let routes = shared.routes.load();
        let snapshot = routes.snapshot.as_deref();
        let entry = snapshot.and_then(|s| s.app(app)).cloned();
        match super::admit::own_instance(snapshot, entry.as_deref(), instance) {
            Ok((_, index)) => match entry {
                Some(entry) => (entry, index),
                None => return super::http::refuse(shared, RetryElsewhere::UnknownApp),
            },
            Err(why) => return super::http::refuse(shared, why.into()),
        }
    };
    let handed_over = shared.handed_over.load(std::sync::atomic::Ordering::SeqCst);
    if shared.drain.is_draining() && !handed_over {
        return super::http::refuse(shared, RetryElsewhere::Draining);
    }
    let live = entry.instances[index].live.clone();
    let on_demand = &entry.config.on_demand;
    let ended = if live.power.running() {
        Ended::Ready
    } else if !live.power.driven() || !on_demand.auto_start {
        // Not this node's to start for a request (`auto_start = false`).
        Ended::Failed(Duration::from_secs(1))
    } else {
        let bound = tokio::time::Instant::now() + on_demand.start_timeout + MARGIN;
        started(&live.power, bound, app, instance, edge).await
    };
    let mut resp = Response::new(RespBody::empty());
    match ended {
        Ended::Ready => tracing::debug!(%app, %instance, %edge, "start request answered: ready"),
        Ended::Failed(after) => {
            tracing::info!(%app, %instance, %edge, retry_after = ?after, "start request answered: failed");
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
    resp
}

/// Ask for the start (or join the one under way, or wait out a stop under way first) and wait
/// for its end, up to `bound`.
async fn started(
    power: &anyedge_catalog::Power,
    bound: tokio::time::Instant,
    app: &str,
    instance: &str,
    edge: &str,
) -> Ended {
    for _ in 0..ROUNDS {
        // Subscribed before asking, so the start's end cannot be missed.
        let mut changes = power.subscribe();
        if power.request_start(Instant::now()) {
            tracing::info!(%app, %instance, %edge, "starting a stopped instance for an edge");
        }
        let state = loop {
            let state = power.state();
            if !matches!(state, PowerState::Starting | PowerState::Stopping) {
                break state;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break power.state() },
                _ = tokio::time::sleep_until(bound) => break state,
            }
        };
        match state {
            PowerState::Running => return Ended::Ready,
            PowerState::Failed => return Ended::Failed(power.backoff_left(Instant::now())),
            // The driver's first look, or a stop, found it stopped: start it in the next round.
            PowerState::Stopped if tokio::time::Instant::now() < bound => continue,
            PowerState::Stopped | PowerState::Starting | PowerState::Stopping => break,
        }
    }
    Ended::Failed(Duration::from_secs(1))
}
