//! Admission and placement for one request or connection: take a slot in the app's budget on
//! this node, then choose an instance with the pure rules of `anyedge_placement` and take a
//! slot on it. When the app's budget or every usable instance is full, wait in the app's queue
//! (bounded by `limits.queue` and `limits.queue_timeout`). Slots are drop guards that wake the
//! queue, so no path leaks one and no waiter misses a release.

mod start;

use anyedge_catalog::{AppEntry, QueueTicket, Slot};
use anyedge_placement::{Candidate, Constraints, Decision, Tier};
use anyedge_telemetry::{AppMetrics, ErrorCode};
use std::fmt::Write;
use std::time::Instant;

/// Apps with up to this many instances are placed without allocating.
const INLINE_CANDIDATES: usize = 16;

/// A queued request looks again this often even when not woken: a release wakes one waiter,
/// and one whose constraints exclude the freed instance lets the slot pass to newcomers.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Why a request or connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdmitError {
    #[error("the app's queue on this node is full")]
    Overloaded,
    #[error("no slot came free within the app's queue timeout")]
    QueueTimeout,
    #[error("no healthy instance of the app can take it")]
    Unavailable,
    #[error("the forced region or instance has nothing that can take it")]
    ForcedUnavailable,
    #[error("the instance started for it failed to start or was not ready within start_timeout")]
    StartFailed,
}

impl AdmitError {
    pub fn code(self) -> ErrorCode {
        match self {
            AdmitError::Overloaded => ErrorCode::AppOverloaded,
            AdmitError::QueueTimeout => ErrorCode::QueueTimeout,
            AdmitError::Unavailable => ErrorCode::NoInstance,
            AdmitError::ForcedUnavailable => ErrorCode::ForcedUnavailable,
            AdmitError::StartFailed => ErrorCode::InstanceStartFailed,
        }
    }
}

/// A chosen instance with its slot.
pub(crate) struct Placed {
    pub index: usize,
    pub slot: Slot,
    pub preference_unmet: bool,
}

/// What one attempt at getting a slot gave.
enum Attempt<T> {
    Ready(T),
    Full,
    Fail(AdmitError),
}

/// Try `attempt`; while it reports full, wait in the app's queue for a release, up to
/// `deadline`.
async fn with_queue<T>(
    app: &AppEntry,
    deadline: tokio::time::Instant,
    metrics: &AppMetrics,
    mut attempt: impl FnMut() -> Attempt<T>,
) -> Result<T, AdmitError> {
    match attempt() {
        Attempt::Ready(t) => Ok(t),
        Attempt::Fail(e) => Err(e),
        // Boxed: waiting is the exception, and its state (a notification and a timer) inline
        // would enlarge every request's future.
        Attempt::Full => Box::pin(wait_in_queue(app, deadline, metrics, &mut attempt)).await,
    }
}

/// The queue part of `with_queue`: the first attempt found everything full.
async fn wait_in_queue<T>(
    app: &AppEntry,
    deadline: tokio::time::Instant,
    metrics: &AppMetrics,
    attempt: &mut impl FnMut() -> Attempt<T>,
) -> Result<T, AdmitError> {
    let limits = &app.config.limits;
    // A deadline already past (`queue_timeout = "0s"`, or a replay's spent timeout) waits
    // for nothing: it takes no place in the queue and is not counted as queued.
    if limits.queue > 0 && tokio::time::Instant::now() >= deadline {
        return Err(AdmitError::QueueTimeout);
    }
    let ticket: QueueTicket = app
        .live
        .enqueue(limits.queue)
        .ok_or(AdmitError::Overloaded)?;
    metrics.queued();
    loop {
        let notified = ticket.notified();
        tokio::pin!(notified);
        QueueTicket::recheck(notified.as_mut());
        match attempt() {
            Attempt::Ready(t) => return Ok(t),
            Attempt::Fail(e) => return Err(e),
            Attempt::Full => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(AdmitError::QueueTimeout);
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline.min(now + RECHECK)) => {}
        }
    }
}

/// A slot in the app's own budget (`limits.max_inflight`), waiting in its queue when full.
pub(crate) async fn admit_app(
    app: &AppEntry,
    deadline: tokio::time::Instant,
    metrics: &AppMetrics,
) -> Result<Slot, AdmitError> {
    let limit = app.config.limits.max_inflight;
    with_queue(app, deadline, metrics, || match app.live.try_admit(limit) {
        Some(slot) => Attempt::Ready(slot),
        None => Attempt::Full,
    })
    .await
}

/// Choose an instance not in `tried` and take a slot on it, waiting in the queue while every
/// usable instance is at its hard limit. `trace` gets the decision for `P-Route` when asked.
/// An app with instances started on demand that has none running with room starts one and
/// waits for it (`start.rs`): the one branch the hot path pays for it.
pub(crate) async fn place(
    app: &AppEntry,
    constraints: &Constraints<'_>,
    tried: &[bool],
    deadline: tokio::time::Instant,
    metrics: &AppMetrics,
    mut trace: Option<&mut String>,
) -> Result<Placed, AdmitError> {
    match place_now(
        app,
        constraints,
        tried,
        deadline,
        metrics,
        trace.as_deref_mut(),
    )
    .await
    {
        Err(e @ (AdmitError::Unavailable | AdmitError::ForcedUnavailable)) if app.on_demand => {
            // Boxed: a start is the exception, and its state would enlarge every request's
            // future.
            Box::pin(start::place_after_start(
                app,
                constraints,
                tried,
                deadline,
                metrics,
                trace,
                e,
            ))
            .await
        }
        placed => placed,
    }
}

/// [`place`] among the instances running now.
async fn place_now(
    app: &AppEntry,
    constraints: &Constraints<'_>,
    tried: &[bool],
    deadline: tokio::time::Instant,
    metrics: &AppMetrics,
    mut trace: Option<&mut String>,
) -> Result<Placed, AdmitError> {
    let forced = !constraints.force_regions.is_empty() || constraints.force_instance.is_some();
    with_queue(app, deadline, metrics, || {
        // Another shard may take the last slot between the look and the take: look again.
        for _ in 0..4 {
            let decision = decide(app, constraints, tried, trace.as_deref_mut());
            match decision {
                Decision::Chosen {
                    index,
                    preference_unmet,
                    why,
                } => {
                    if app.on_demand && why.tier != Tier::BelowSoft {
                        // Served now; capacity is added for the load to come.
                        start::add_capacity(app, constraints, tried);
                    }
                    let hard = app.config.concurrency.hard_limit;
                    if let Some(slot) = app.instances[index].live.try_take(hard, &app.live) {
                        return Attempt::Ready(Placed {
                            index,
                            slot,
                            preference_unmet,
                        });
                    }
                }
                Decision::Full { .. } => {
                    if app.on_demand {
                        start::add_capacity(app, constraints, tried);
                    }
                    return Attempt::Full;
                }
                Decision::Unavailable if forced => {
                    return Attempt::Fail(AdmitError::ForcedUnavailable)
                }
                Decision::Unavailable => return Attempt::Fail(AdmitError::Unavailable),
            }
        }
        Attempt::Full
    })
    .await
}

/// One pure placement decision over the instances' live state. Instances ejected as outliers
/// (`docs/health.md`) are left out; when that leaves nothing, placement runs again with them
/// in the lowest tier: the last resort.
fn decide(
    app: &AppEntry,
    constraints: &Constraints<'_>,
    tried: &[bool],
    mut trace: Option<&mut String>,
) -> Decision {
    let now = Instant::now();
    let mut decide_on = |candidates: &[Candidate], last_resort: bool| {
        let decision = anyedge_placement::place(candidates, constraints, &mut rand::thread_rng());
        if let Some(out) = trace.as_deref_mut() {
            describe(app, candidates, &decision, now, last_resort, out);
        }
        decision
    };
    let (decision, held) = with_candidates(app, tried, now, false, |c| decide_on(c, false));
    if held && matches!(decision, Decision::Unavailable) {
        return with_candidates(app, tried, now, true, |c| decide_on(c, true)).0;
    }
    decision
}

/// Placement's view of the app's instances at `now` given to `f`, and whether any untried one is
/// held out as an outlier (with `last_resort`, such an instance is usable in the lowest tier).
fn with_candidates<R>(
    app: &AppEntry,
    tried: &[bool],
    now: Instant,
    last_resort: bool,
    f: impl FnOnce(&[Candidate]) -> R,
) -> (R, bool) {
    let limits = app.config.concurrency;
    let on_demand = app.on_demand;
    let mut any_held = false;
    let mut view = |(i, &excluded): (&anyedge_catalog::InstanceEntry, &bool)| {
        // Held out: an ejected outlier, or an instance whose worker went silent.
        let held = !excluded && (i.live.outlier_held(now) || i.live.silent(now));
        any_held |= held;
        // Only an app with instances started on demand looks at their power state.
        let healthy =
            i.live.healthy(now) && (last_resort || !held) && (!on_demand || i.live.power.running());
        Candidate {
            region: i.region_index,
            distance_us: i.distance_us(),
            inflight: i.live.load(now),
            soft_limit: limits.soft_limit,
            hard_limit: limits.hard_limit,
            healthy,
            backing_off: healthy && (held || i.live.backing_off(now)),
            excluded,
        }
    };
    let n = app.instances.len();
    let mut inline = [Candidate {
        region: 0,
        distance_us: 0,
        inflight: 0,
        soft_limit: 0,
        hard_limit: 0,
        healthy: false,
        backing_off: false,
        excluded: true,
    }; INLINE_CANDIDATES];
    let heap: Vec<Candidate>;
    let candidates: &[Candidate] = if n <= INLINE_CANDIDATES {
        for (slot, c) in inline
            .iter_mut()
            .zip(app.instances.iter().zip(tried).map(&mut view))
        {
            *slot = c;
        }
        &inline[..n]
    } else {
        heap = app.instances.iter().zip(tried).map(&mut view).collect();
        &heap
    };
    (f(candidates), any_held)
}

/// Instances listed in a `P-Route` header at most.
const TRACE_MAX: usize = 32;

/// The `P-Route` text: the decision (with `last_resort=ejected` when only ejected outliers were
/// left), then each candidate as `id@region ~RTTms inflight/soft/hard state`.
fn describe(
    app: &AppEntry,
    candidates: &[Candidate],
    decision: &Decision,
    now: Instant,
    last_resort: bool,
    out: &mut String,
) {
    out.clear();
    match decision {
        Decision::Chosen {
            index,
            why,
            preference_unmet,
        } => {
            let _ = write!(
                out,
                "chosen={}; why={why}; preference_unmet={preference_unmet}",
                app.instances[*index].id.instance()
            );
            if last_resort {
                out.push_str("; last_resort=ejected");
            }
        }
        Decision::Full { .. } => out.push_str("chosen=none; why=all_at_hard_limit"),
        Decision::Unavailable => out.push_str("chosen=none; why=no_usable_instance"),
    }
    out.push_str("; candidates=");
    for (k, (c, inst)) in candidates.iter().zip(&app.instances).enumerate() {
        if k == TRACE_MAX {
            let _ = write!(out, " (+{} more)", candidates.len() - TRACE_MAX);
            break;
        }
        if k > 0 {
            out.push_str(", ");
        }
        let state = state_word(c, inst, now);
        let _ = write!(
            out,
            "{}@{} ~{:.1}ms {}/{}/{} {state}",
            inst.id.instance(),
            inst.region,
            f64::from(c.distance_us) / 1000.0,
            c.inflight,
            limit_text(c.soft_limit),
            limit_text(c.hard_limit),
        );
    }
}

/// A candidate's state in the `P-Route` text.
fn state_word(c: &Candidate, inst: &anyedge_catalog::InstanceEntry, now: Instant) -> &'static str {
    if c.excluded {
        "tried"
    } else if !inst.live.power.running() {
        inst.live.power.state().as_str()
    } else if !inst.live.healthy(now) {
        "unhealthy"
    } else if inst.live.outlier_held(now) {
        "ejected"
    } else if inst.live.silent(now) {
        "silent"
    } else if c.inflight >= c.hard_limit {
        "at_hard_limit"
    } else if c.backing_off {
        "backing_off"
    } else {
        "ok"
    }
}

fn limit_text(n: u32) -> String {
    if n == u32::MAX {
        "-".into()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests;
