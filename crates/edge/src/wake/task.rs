//! One instance's driver task: the only code that starts and stops it. It takes the first look
//! (does its address accept a connection?), carries out the starts requests ask for (driver,
//! then readiness by the check or the port, within `start_timeout`), and stops it after
//! `stop_after` of idleness when the autostop rule allows (`super::autostop`), draining
//! first. It waits on the instance's power state, so a stopped instance costs no CPU.

use super::autostop;
use super::driver::{self, Action, Target};
use crate::instance::connect::Resolver;
use crate::instance::probe::Probe;
use anyedge_catalog::{AppEntry, InstanceLive, PowerState};
use anyedge_config::{AutoStop, Driver};
use anyedge_telemetry::{AppMetrics, StartResult};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often readiness is probed during a start: the added latency of a request that waited
/// is about half of this beyond the instance's own start.
const READY_POLL: Duration = Duration::from_millis(20);
/// Bound on a stop's drain (in-flight requests finishing) and on its driver call.
const STOP_BOUND: Duration = Duration::from_secs(30);

/// Everything the task runs with; when any of it changes the task is restarted.
#[derive(Clone)]
pub(super) struct Spec {
    pub driver: Driver,
    pub target: Target,
    /// Readiness: the app's first check, else a TCP connect to its port.
    pub ready: Probe,
    pub live: Arc<InstanceLive>,
}

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        self.driver == other.driver
            && self.target == other.target
            && self.ready == other.ready
            && Arc::ptr_eq(&self.live, &other.live)
    }
}

pub(super) struct Task {
    pub spec: Spec,
    /// The app's entry in force, shared with the app's other tasks.
    pub app: Arc<super::AppShared>,
    pub metrics: Arc<AppMetrics>,
    pub resolver: Arc<Resolver>,
}

impl Task {
    pub(super) async fn run(self) {
        let power = &self.spec.live.power;
        let mut changes = power.subscribe();
        // Taken over from an earlier task, or newly driven: look rather than guess.
        if matches!(power.state(), PowerState::Starting | PowerState::Stopping) {
            self.look().await;
        }
        loop {
            changes.borrow_and_update();
            match power.state() {
                PowerState::Starting => self.start().await,
                PowerState::Running => {
                    let app = self.app.entry.load_full();
                    if app.config.on_demand.auto_stop == AutoStop::Off {
                        if changes.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                    self.watch_idle(&mut changes, &app).await;
                }
                _ => {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// The first look: running if its address accepts a connection, else stopped.
    async fn look(&self) {
        let up = self.port_open().await;
        let power = &self.spec.live.power;
        let state = if up {
            PowerState::Running
        } else {
            PowerState::Stopped
        };
        tracing::info!(app = %self.spec.target.app, instance = %self.spec.target.instance, state = state.as_str(), "instance with a driver looked at");
        if up {
            power.started(Instant::now());
        } else {
            power.set(state);
        }
    }

    async fn port_open(&self) -> bool {
        let p = &self.spec.ready;
        let timeout = Duration::from_secs(1);
        crate::instance::connect::connect_one(&p.host, p.port, timeout, &self.resolver)
            .await
            .is_ok()
    }

    /// One start: the driver and readiness side by side, within `start_timeout`.
    async fn start(&self) {
        let began = Instant::now();
        let timeout = self.app.entry.load().config.on_demand.start_timeout;
        let (app, instance) = (&self.spec.target.app, &self.spec.target.instance);
        tracing::info!(%app, %instance, driver = self.spec.driver.kind(), "starting instance");
        // Its own task: a start command that keeps running as the instance must outlive a
        // start that succeeded; aborting it (a start given up) kills the command.
        let (driver, target) = (self.spec.driver.clone(), self.spec.target.clone());
        let mut launch =
            tokio::spawn(async move { driver::run(&driver, Action::Start, &target).await });
        let mut launched = false;
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                tokio::select! {
                    r = &mut launch, if !launched => match r {
                        Ok(Ok(())) => launched = true,
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(e) => return Err(format!("the driver's task failed: {e}")),
                    },
                    () = tokio::time::sleep(READY_POLL) => {
                        if self.spec.ready.run(&self.resolver).await.is_ok() {
                            return Ok(());
                        }
                    }
                }
            }
        })
        .await;
        let seconds = began.elapsed().as_secs_f64();
        let m = self.metrics.on_demand();
        match outcome {
            Ok(Ok(())) => {
                m.start(StartResult::Ok, seconds);
                tracing::info!(%app, %instance, seconds, "instance ready");
                self.spec.live.power.started(Instant::now());
                // Requests queued behind full instances look again at once.
                self.app.entry.load().live.wake_all();
            }
            Ok(Err(reason)) => {
                launch.abort();
                m.start(StartResult::Failed, seconds);
                tracing::warn!(%app, %instance, seconds, %reason, "instance start failed");
                self.failed().await;
            }
            Err(_) => {
                launch.abort();
                m.start(StartResult::Timeout, seconds);
                tracing::warn!(%app, %instance, seconds, ?timeout, "instance not ready within start_timeout");
                self.failed().await;
            }
        }
    }

    /// A failed start: out of placement with backoff, and the driver's stop is run (bounded)
    /// so that the next start begins from a stopped instance.
    async fn failed(&self) {
        self.spec.live.power.start_failed(Instant::now());
        let (driver, target) = (&self.spec.driver, &self.spec.target);
        match tokio::time::timeout(STOP_BOUND, driver::run(driver, Action::Stop, target)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(app = %target.app, instance = %target.instance, error = %e, "stop after a failed start failed")
            }
            Err(_) => {
                tracing::warn!(app = %target.app, instance = %target.instance, "stop after a failed start timed out")
            }
        }
    }

    /// While running with autostop on: look every tick whether it was used; once idle for
    /// `stop_after` and the rule allows, stop it. Returns on a state change.
    async fn watch_idle(
        &self,
        changes: &mut tokio::sync::watch::Receiver<PowerState>,
        app: &Arc<AppEntry>,
    ) {
        let live = &self.spec.live;
        let stop_after = app.config.on_demand.stop_after;
        let tick = (stop_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut taken = live.taken();
        live.power.touch(Instant::now());
        loop {
            tokio::select! {
                r = changes.changed() => { let _ = r; return; }
                () = tokio::time::sleep(tick) => {}
            }
            let now = Instant::now();
            let seen = live.taken();
            if seen != taken || live.inflight.in_use() > 0 {
                taken = seen;
                live.power.touch(now);
                continue;
            }
            if live.power.idle_for(now) < stop_after {
                continue;
            }
            let app = self.app.entry.load_full();
            let Some(index) = app
                .instances
                .iter()
                .position(|i| Arc::ptr_eq(&i.live, live))
            else {
                continue;
            };
            let decided = {
                let _one_at_a_time = self
                    .app
                    .stopping
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                autostop::may_stop(&app, index, now)
                    && live
                        .power
                        .transition(PowerState::Running, PowerState::Stopping)
            };
            if decided {
                self.stop().await;
                return;
            }
        }
    }

    /// Drain (no new requests: it is `Stopping`; those in flight finish), then the driver's
    /// stop. A stop that fails leaves it as the next look finds it.
    async fn stop(&self) {
        let power = &self.spec.live.power;
        let (app, instance) = (&self.spec.target.app, &self.spec.target.instance);
        tracing::info!(%app, %instance, "stopping idle instance: draining");
        let drained = tokio::time::timeout(STOP_BOUND, async {
            while self.spec.live.inflight.in_use() > 0 {
                tokio::time::sleep(READY_POLL).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(%app, %instance, in_flight = self.spec.live.inflight.in_use(), "drain not done within 30s: stopping anyway");
        }
        let (driver, target) = (&self.spec.driver, &self.spec.target);
        match tokio::time::timeout(STOP_BOUND, driver::run(driver, Action::Stop, target)).await {
            Ok(Ok(())) => {
                self.metrics.on_demand().stop();
                power.set(PowerState::Stopped);
                tracing::info!(%app, %instance, "instance stopped");
            }
            Ok(Err(e)) => {
                tracing::warn!(%app, %instance, error = %e, "stop failed");
                self.look().await;
            }
            Err(_) => {
                tracing::warn!(%app, %instance, "stop timed out");
                self.look().await;
            }
        }
    }
}
