//! A request that found no running instance with room, in an app whose instances start on
//! demand (`docs/on-demand.md`): join the start under way, or ask for one of the best stopped
//! instance, wait for it in the app's queue, then place among the running again. The start
//! itself is the node's driver task's (`crate::wake`); the two meet only in the instance's
//! power state (`anyedge_catalog::Power`), whose compare-and-swap makes concurrent requests
//! join one start.

use super::{place_now, AdmitError, Placed};
use anyedge_catalog::{AppEntry, PowerState};
use anyedge_placement::Constraints;
use anyedge_telemetry::AppMetrics;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// A waiter's own bound beyond `start_timeout`: the driver task ends a start by then; this
/// only guards against a start nobody drives.
const MARGIN: Duration = Duration::from_secs(1);

/// Starts one request may wait for in a row (an instance found stopped by the driver's first
/// look, then started; one ready but full at once).
const ROUNDS: usize = 4;

pub(super) async fn place_after_start(
    app: &AppEntry,
    constraints: &Constraints<'_>,
    tried: &[bool],
    mut deadline: tokio::time::Instant,
    metrics: &AppMetrics,
    mut trace: Option<&mut String>,
    none: AdmitError,
) -> Result<Placed, AdmitError> {
    let began = Instant::now();
    let mut counted = false;
    for _ in 0..ROUNDS {
        let now = Instant::now();
        let target = match pick(app, constraints, tried, |s, _| s == PowerState::Starting) {
            Some(i) => i,
            None if app.config.on_demand.auto_start => {
                match pick(app, constraints, tried, |_, p| p.startable(now)) {
                    Some(i) => i,
                    None => return Err(nothing_startable(app, constraints, tried, none)),
                }
            }
            None => return Err(nothing_startable(app, constraints, tried, none)),
        };
        let power = &app.instances[target].live.power;
        // Subscribed before asking, so the start's end cannot be missed.
        let mut changes = power.subscribe();
        if power.request_start(now) {
            tracing::info!(app = %app.name, instance = %app.instances[target].id.instance(), "starting a stopped instance for a waiting request");
        }
        // Waiting is waiting in the app's queue: bounded by `limits.queue`.
        let ticket = app
            .live
            .enqueue(app.config.limits.queue)
            .ok_or(AdmitError::Overloaded)?;
        if !counted {
            counted = true;
            metrics.on_demand().waited();
        }
        let bound = tokio::time::Instant::now() + app.config.on_demand.start_timeout + MARGIN;
        let state = loop {
            let state = power.state();
            if state != PowerState::Starting {
                break state;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break power.state() },
                _ = tokio::time::sleep_until(bound) => break PowerState::Starting,
            }
        };
        drop(ticket);
        match state {
            PowerState::Running => {
                // The queue's time starts again once the instance is up.
                let queue_timeout = app.config.limits.queue_timeout;
                deadline = deadline.max(tokio::time::Instant::now() + queue_timeout);
                let placed = place_now(
                    app,
                    constraints,
                    tried,
                    deadline,
                    metrics,
                    trace.as_deref_mut(),
                )
                .await;
                match placed {
                    Ok(p) => {
                        if let Some(out) = trace {
                            let _ = write!(
                                out,
                                "; waited_for_start={} {}ms",
                                app.instances[target].id.instance(),
                                began.elapsed().as_millis()
                            );
                        }
                        return Ok(p);
                    }
                    Err(AdmitError::Unavailable | AdmitError::ForcedUnavailable) => continue,
                    Err(e) => return Err(e),
                }
            }
            // The driver's first look found it down: start it in the next round.
            PowerState::Stopped | PowerState::Stopping => continue,
            PowerState::Failed | PowerState::Starting => {
                // The next stopped instance is started for the requests to come; these ones
                // are answered now, with the distinct code and Retry-After.
                if app.config.on_demand.auto_start {
                    let now = Instant::now();
                    if let Some(next) = pick(app, constraints, tried, |_, p| p.startable(now)) {
                        if app.instances[next].live.power.request_start(now) {
                            tracing::info!(app = %app.name, failed = %app.instances[target].id.instance(), instance = %app.instances[next].id.instance(), "start failed: starting the next stopped instance");
                        }
                    }
                }
                return Err(AdmitError::StartFailed);
            }
        }
    }
    Err(none)
}

/// Every running instance is over its soft limit, or at its hard limit: ask for a start of the
/// best stopped instance, unless one is starting already (one start at a time per app for
/// capacity, so sustained overload does not start every instance at once). The request does
/// not wait for it: it is served, or queued, as placement said; the start's end wakes the
/// queue.
pub(super) fn add_capacity(app: &AppEntry, constraints: &Constraints<'_>, tried: &[bool]) {
    if !app.config.on_demand.auto_start
        || app
            .instances
            .iter()
            .any(|i| i.live.power.state() == PowerState::Starting)
    {
        return;
    }
    let now = Instant::now();
    if let Some(i) = pick(app, constraints, tried, |_, p| p.startable(now)) {
        if app.instances[i].live.power.request_start(now) {
            tracing::info!(app = %app.name, instance = %app.instances[i].id.instance(), "running instances over their soft limit: starting a stopped one");
        }
    }
}

/// The best instance, by placement's order (untried, allowed by the constraints, one that did
/// not fail its last start first, preferred regions first, then the nearest), whose power
/// state passes `want`.
fn pick(
    app: &AppEntry,
    constraints: &Constraints<'_>,
    tried: &[bool],
    want: impl Fn(PowerState, &anyedge_catalog::Power) -> bool,
) -> Option<usize> {
    let allowed = |i: usize| {
        let inst = &app.instances[i];
        !tried.get(i).copied().unwrap_or(false)
            && inst.live.power.on_demand()
            && constraints.force_instance.is_none_or(|f| f == i)
            && (constraints.force_regions.is_empty()
                || constraints.force_regions.contains(&inst.region_index))
    };
    (0..app.instances.len())
        .filter(|&i| allowed(i))
        .filter(|&i| {
            let p = &app.instances[i].live.power;
            want(p.state(), p)
        })
        .min_by_key(|&i| {
            let inst = &app.instances[i];
            let preferred = constraints.prefer_instance == Some(i)
                || constraints.prefer_regions.contains(&inst.region_index);
            // A stopped instance before one whose last start failed (its backoff over).
            let failed = inst.live.power.state() == PowerState::Failed;
            (failed, !preferred, inst.distance_us(), i)
        })
}

/// Nothing to start: a failed start in its backoff is told apart from `none`, what placement
/// said (no usable instance, or none in the forced region or instance).
fn nothing_startable(
    app: &AppEntry,
    constraints: &Constraints<'_>,
    tried: &[bool],
    none: AdmitError,
) -> AdmitError {
    match pick(app, constraints, tried, |s, _| s == PowerState::Failed) {
        Some(_) => AdmitError::StartFailed,
        None => none,
    }
}
