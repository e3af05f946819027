//! Instances started on demand and stopped when idle (`docs/on-demand.md`): one driver task
//! per instance this node runs with a driver (`wake/task.rs`), started and stopped by diffing
//! catalog snapshots like the health checks, so a task whose driver, address and readiness
//! check did not change keeps running across reloads. Requests never call a driver: they ask
//! for a start through the instance's power state (`crate::admit`), which the task watches.

mod autostop;
mod driver;
mod task;

use crate::instance::connect::Resolver;
use crate::instance::probe::{probe_for, Probe};
use anyedge_catalog::{AppEntry, InstanceEntry, Snapshot};
use anyedge_config::{Check, CheckKind, Handler, HostPort, Service};
use anyedge_core::InstanceId;
use anyedge_telemetry::Metrics;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

/// Bound on one readiness probe when the app has no check (a TCP connect).
const CONNECT_PROBE: Duration = Duration::from_secs(1);

/// What the tasks of one app's instances share.
pub(crate) struct AppShared {
    /// The app's entry in force (updated on every snapshot): its settings and the other
    /// instances, for the autostop rule.
    pub entry: ArcSwap<AppEntry>,
    /// Held while one task decides a stop and marks its instance stopping: two idle instances
    /// deciding at once would each count the other as running and both stop, below
    /// `min_running`.
    pub stopping: Mutex<()>,
}

struct Running {
    spec: task::Spec,
    task: AbortHandle,
}

/// The driver tasks of the instances in the snapshot in force.
pub struct Drivers {
    runtime: Handle,
    metrics: Arc<Metrics>,
    resolver: Arc<Resolver>,
    running: Mutex<HashMap<InstanceId, Running>>,
    /// The entry in force of each app with a driven instance, shared with its tasks.
    apps: Mutex<HashMap<Arc<str>, Arc<AppShared>>>,
}

impl Drivers {
    /// Tasks run on `runtime` (the node's control runtime: they are light).
    pub fn new(runtime: Handle, metrics: Arc<Metrics>) -> Drivers {
        Drivers {
            runtime,
            metrics,
            resolver: Arc::new(Resolver::default()),
            running: Mutex::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// Put a snapshot's drivers in force; returns how many tasks were started.
    pub fn update(&self, snapshot: &Snapshot) -> usize {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        // No app had drivers, and the diff brings none: nothing to walk (the walk over every
        // app for none was a share of an etcd change's CPU at 100,000 apps). Snapshots come
        // here in order, so the diff is against the snapshot last put in force.
        let none_new = snapshot.diff.as_ref().is_some_and(|d| {
            d.built
                .iter()
                .all(|name| snapshot.app(name).is_none_or(|a| !a.on_demand))
        });
        if apps.is_empty() && none_new {
            return 0;
        }
        let mut wanted = HashMap::new();
        let mut entries = HashMap::new();
        for app in snapshot.apps.values().filter(|a| a.on_demand) {
            let shared = match apps.remove(&app.name) {
                Some(s) => {
                    s.entry.store(app.clone());
                    s
                }
                None => Arc::new(AppShared {
                    entry: ArcSwap::new(app.clone()),
                    stopping: Mutex::new(()),
                }),
            };
            for (index, inst) in app.instances.iter().enumerate() {
                if let Some(spec) = spec_for(app, index, inst) {
                    wanted.insert(inst.id.clone(), (spec, shared.clone()));
                }
            }
            entries.insert(app.name.clone(), shared);
        }
        *apps = entries;
        drop(apps);
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.retain(|id, r| {
            let keep = wanted.get(id).is_some_and(|(spec, _)| *spec == r.spec);
            if keep {
                wanted.remove(id);
            } else {
                r.task.abort();
            }
            keep
        });
        let started = wanted.len();
        for (id, (spec, app)) in wanted {
            let task = task::Task {
                metrics: self.metrics.app(&spec.target.app),
                spec: spec.clone(),
                app,
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
        }
        started
    }

    /// Stop every task (the node is stopping); instances are left as they are.
    pub fn stop(&self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, r) in running.drain() {
            r.task.abort();
        }
    }

    /// Driver tasks running now.
    pub fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Drivers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The task's spec for one instance, if this node drives it.
fn spec_for(app: &AppEntry, index: usize, inst: &InstanceEntry) -> Option<task::Spec> {
    if !inst.live.power.driven() {
        return None;
    }
    let driver = app.config.instances.get(index)?.driver.clone()?;
    let services = &app.config.services;
    let serves_http = |s: &&Service| s.ports.iter().any(|p| p.handlers.contains(&Handler::Http));
    let service = services
        .iter()
        .find(serves_http)
        .or_else(|| services.first())?;
    let ready = readiness(app, inst, service)?;
    let address = HostPort {
        host: inst.address.host.clone(),
        port: Some(ready.port),
    }
    .to_string();
    Some(task::Spec {
        driver,
        target: driver::Target {
            app: app.name.to_string(),
            instance: inst.id.instance().to_string(),
            address,
        },
        ready,
        live: inst.live.clone(),
    })
}

/// Ready: the service's first check passes, or without one its port accepts a connection.
fn readiness(app: &AppEntry, inst: &InstanceEntry, service: &Service) -> Option<Probe> {
    let connect = Check {
        kind: CheckKind::Tcp,
        interval: CONNECT_PROBE,
        timeout: CONNECT_PROBE,
        grace_period: Duration::ZERO,
        unhealthy_threshold: 1,
        healthy_threshold: 1,
    };
    let check = service.checks.first().unwrap_or(&connect);
    let mut probe = probe_for(app, inst, service.internal_port, check)?;
    probe.h2 = service.http_options.h2_backend;
    Some(probe)
}
