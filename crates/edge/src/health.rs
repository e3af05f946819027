//! Active health checks: one task per (instance, service, check), started and stopped by diffing
//! catalog snapshots, so a check whose instance, config and target did not change keeps its
//! state across reloads. A task whose instance fails holds a [`FailingCheck`] guard, which keeps
//! the instance out of placement; stopping the task (check removed, node stopping) drops it.
//!
//! An instance starts healthy: until a check has failed `unhealthy_threshold` times in a row
//! after its grace period, nothing is known against it (docs/health.md).

mod state;

pub use state::{CheckState, Transition};

use crate::instance::connect::Resolver;
use crate::instance::probe::{probe_for, Probe, ProbeFailure};
use anyedge_catalog::{AppEntry, FailingCheck, InstanceLive, Snapshot};
use anyedge_config::{Check, CheckKind};
use anyedge_core::InstanceId;
use anyedge_telemetry::{AppMetrics, Metrics};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

/// Which check of which instance: stable across snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckId {
    instance: InstanceId,
    service: usize,
    check: usize,
}

/// Everything a check task runs with; when any of it changes the task is restarted.
#[derive(Clone)]
struct CheckSpec {
    check: Check,
    probe: Probe,
    live: Arc<InstanceLive>,
}

impl PartialEq for CheckSpec {
    fn eq(&self, other: &Self) -> bool {
        self.check == other.check
            && self.probe == other.probe
            && Arc::ptr_eq(&self.live, &other.live)
    }
}

struct Running {
    spec: CheckSpec,
    task: AbortHandle,
}

/// What one [`HealthChecker::update`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HealthUpdate {
    pub started: usize,
    pub stopped: usize,
    pub kept: usize,
}

/// Runs the active checks of every instance in the snapshot in force.
pub struct HealthChecker {
    runtime: Handle,
    metrics: Arc<Metrics>,
    resolver: Arc<Resolver>,
    running: Mutex<Checks>,
}

/// The checks running, and the generation of the snapshot they are for.
#[derive(Default)]
struct Checks {
    running: HashMap<CheckId, Running>,
    generation: Option<u64>,
}

impl HealthChecker {
    /// Checks run as tasks on `runtime` (the node's control runtime: they are light).
    pub fn new(runtime: Handle, metrics: Arc<Metrics>) -> HealthChecker {
        HealthChecker {
            runtime,
            metrics,
            resolver: Arc::new(Resolver::default()),
            running: Mutex::new(Checks::default()),
        }
    }

    /// Put a snapshot's checks in force: start the new ones, stop those it no longer has (their
    /// instances count as healthy again), leave the unchanged ones running with their state.
    /// A snapshot built on the one the checks are for is applied by its diff: only the checks
    /// of the apps it built or dropped are looked at, not every app's.
    pub fn update(&self, snapshot: &Snapshot) -> HealthUpdate {
        let mut checks = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let diff = snapshot
            .diff
            .as_ref()
            .filter(|d| checks.generation == Some(d.since));
        let in_scope: Option<HashSet<&str>> =
            diff.map(|d| d.built.iter().chain(&d.gone).map(|n| &**n).collect());
        let mut wanted = match diff {
            Some(d) => wanted_checks(d.built.iter().filter_map(|n| snapshot.apps.get(n))),
            None => wanted_checks(snapshot.apps.values()),
        };
        checks.generation = Some(snapshot.generation);
        let running = &mut checks.running;
        let mut done = HealthUpdate::default();
        running.retain(|id, r| {
            let out_of_scope = in_scope
                .as_ref()
                .is_some_and(|apps| !apps.contains(app_name(&id.instance)));
            let keep = out_of_scope || wanted.get(id).is_some_and(|(spec, _)| *spec == r.spec);
            if keep {
                wanted.remove(id);
                done.kept += 1;
            } else {
                r.task.abort();
                done.stopped += 1;
            }
            keep
        });
        for (id, (spec, label)) in wanted {
            let task = CheckTask {
                app: self.metrics.app(app_name(&id.instance)),
                id: id.clone(),
                label,
                spec: spec.clone(),
                resolver: self.resolver.clone(),
            };
            let handle = self.runtime.spawn(task.run());
            running.insert(
                id,
                Running {
                    spec,
                    task: handle.abort_handle(),
                },
            );
            done.started += 1;
        }
        if done.started + done.stopped > 0 {
            tracing::info!(
                started = done.started,
                stopped = done.stopped,
                kept = done.kept,
                "health checks updated"
            );
        }
        done
    }

    /// Stop every check; their instances count as healthy again once the tasks are gone.
    pub fn stop(&self) {
        let mut checks = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        checks.generation = None;
        for (_, r) in checks.running.drain() {
            r.task.abort();
        }
    }

    /// Checks running now.
    pub fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running
            .len()
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn app_name(id: &InstanceId) -> &str {
    id.as_str().split_once('/').map_or("", |(app, _)| app)
}

/// Every check `apps` ask for, with a label for logs.
fn wanted_checks<'a>(
    apps: impl Iterator<Item = &'a Arc<AppEntry>>,
) -> HashMap<CheckId, (CheckSpec, Arc<str>)> {
    let mut out = HashMap::new();
    for app in apps {
        for (s, service) in app.config.services.iter().enumerate() {
            for (c, check) in service.checks.iter().enumerate() {
                let label: Arc<str> = describe(s, c, check).into();
                // Instances on other nodes are checked by their workers, which report over
                // the load feed.
                for inst in app.instances.iter().filter(|i| i.peer.is_none()) {
                    let Some(probe) = probe_for(app, inst, service.internal_port, check) else {
                        tracing::warn!(app = %app.name, instance = %inst.id.instance(), check = %label, "no port to check: the instance's address has none and the service no internal_port");
                        continue;
                    };
                    let id = CheckId {
                        instance: inst.id.clone(),
                        service: s,
                        check: c,
                    };
                    let spec = CheckSpec {
                        check: check.clone(),
                        probe,
                        live: inst.live.clone(),
                    };
                    out.insert(id, (spec, label.clone()));
                }
            }
        }
    }
    out
}

/// `services[0].checks[1] http /healthz`, for logs.
fn describe(service: usize, index: usize, check: &Check) -> String {
    match &check.kind {
        CheckKind::Tcp => format!("services[{service}].checks[{index}] tcp"),
        CheckKind::Http { path } => format!("services[{service}].checks[{index}] http {path}"),
    }
}

/// One running check.
struct CheckTask {
    app: Arc<AppMetrics>,
    id: CheckId,
    label: Arc<str>,
    spec: CheckSpec,
    resolver: Arc<Resolver>,
}

impl CheckTask {
    /// Wait out the grace period, then check every interval until aborted. The guard lives in
    /// this future: aborting the task drops it.
    async fn run(self) {
        let check = &self.spec.check;
        let mut state = CheckState::for_check(check, tokio::time::Instant::now().into_std());
        let mut failing: Option<FailingCheck> = None;
        tokio::time::sleep(check.grace_period).await;
        let mut ticks = tokio::time::interval(check.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let power = &self.spec.live.power;
            if power.driven() && !power.running() {
                // Stopped, starting or stopping on purpose (docs/on-demand.md): its power
                // state keeps it out of placement; the check starts afresh, grace period
                // included, once it runs.
                failing = None;
                state = CheckState::for_check(check, tokio::time::Instant::now().into_std());
                continue;
            }
            let result = self.spec.probe.run(&self.resolver).await;
            self.app.health_check(result.is_ok());
            let now = tokio::time::Instant::now().into_std();
            match (state.record(result.is_ok(), now), result) {
                (Transition::Failing, result) => {
                    failing = Some(self.spec.live.check_failing());
                    self.log_failing(result.err());
                }
                (Transition::Recovered, _) => {
                    failing = None;
                    tracing::info!(
                        app = app_name(&self.id.instance),
                        instance = self.id.instance.instance(),
                        check = %self.label,
                        passes = check.healthy_threshold,
                        "instance healthy again: back in placement"
                    );
                }
                (Transition::None, Err(e)) => tracing::debug!(
                    app = app_name(&self.id.instance),
                    instance = self.id.instance.instance(),
                    check = %self.label,
                    reason = %e,
                    "health check failed"
                ),
                (Transition::None, Ok(())) => {}
            }
            debug_assert_eq!(failing.is_some(), state.failing());
        }
    }

    fn log_failing(&self, reason: Option<ProbeFailure>) {
        let reason = reason.map_or_else(String::new, |e| e.to_string());
        tracing::warn!(
            app = app_name(&self.id.instance),
            instance = self.id.instance.instance(),
            check = %self.label,
            failures = self.spec.check.unhealthy_threshold,
            reason = %reason,
            "instance unhealthy: out of placement"
        );
    }
}

#[cfg(test)]
mod tests;
