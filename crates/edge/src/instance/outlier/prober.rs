//! The probe that brings an ejected outlier back, sent by this node itself: no client request
//! is ever the probe (a hung instance would cost one client request per ejection period).
//!
//! One task per ejected instance ([`anyedge_catalog::OutlierState::claim_prober`]): it waits
//! for the ejection to end, probes, and on a failure ejects again (for twice as long: a probe
//! failure counts as one more failure in a row, reason `probe`) and waits again; on a pass the
//! instance is back in placement. What it sends is what the app's health check asks for (the
//! first check of the service that serves HTTP, else of the first service): its HTTP `GET`
//! judged `2xx`, or its TCP connect; without a check, `GET /` with the app's hostname, where
//! any status but the app's `outlier.gateway_errors` passes (HTTP/2 with prior knowledge for an
//! `h2_backend` service), within [`PROBE_TIMEOUT`]. The task ends when the instance leaves the
//! catalog (its live state is dropped) or comes back by another way (a request sent to it as
//! the last resort succeeded).

use crate::instance::connect::Resolver;
use crate::instance::probe::{Pass, Probe};
use anyedge_catalog::{AppEntry, InstanceEntry};
use anyedge_config::{CheckKind, Handler, Service};
use anyedge_telemetry::{AppMetrics, OutlierReason};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the probe of an app without a check may take, connect included.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Start the probing task for `inst`, unless one runs already or there is nothing to probe
/// with (no port).
pub(crate) fn start(app: &AppEntry, inst: &InstanceEntry, metrics: &Arc<AppMetrics>) {
    let Some(probe) = probe_for(app, inst) else {
        return;
    };
    if !inst.live.outlier.claim_prober() {
        return;
    }
    let live = Arc::downgrade(&inst.live);
    let policy = app.config.outlier.clone();
    let (metrics, app_name, id) = (metrics.clone(), app.name.clone(), inst.id.clone());
    tokio::spawn(async move {
        let resolver = Resolver::default();
        loop {
            let Some(l) = live.upgrade() else { return };
            if !l.outlier.held() {
                // Back by another way. Let go, then look again: an ejection in between found
                // the prober taken and counts on this task.
                l.outlier.release_prober();
                if l.outlier.held() && l.outlier.claim_prober() {
                    continue;
                }
                return;
            }
            let wait = l.outlier.ejection_left(Instant::now());
            drop(l);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                continue;
            }
            let result = probe.run(&resolver).await;
            let Some(l) = live.upgrade() else { return };
            let now = Instant::now();
            match result {
                Ok(()) => {
                    l.outlier.succeeded_at(now);
                    tracing::info!(app = %app_name, instance = %id, "outlier probe passed: the instance is back in placement");
                }
                Err(e) => {
                    if let Some(ejection) = l.outlier.failed(now, &policy) {
                        metrics.outlier_ejection(OutlierReason::Probe);
                        tracing::warn!(app = %app_name, instance = %id, error = %e, ejection = ?ejection.length, in_a_row = ejection.nth, "outlier probe failed: ejected again");
                    }
                }
            }
        }
    });
}

/// What to probe `inst` with: the app's check (see the module), else `GET /`.
fn probe_for(app: &AppEntry, inst: &InstanceEntry) -> Option<Probe> {
    let services = &app.config.services;
    let serves_http = |s: &&Service| s.ports.iter().any(|p| p.handlers.contains(&Handler::Http));
    let service = services
        .iter()
        .find(serves_http)
        .or_else(|| services.first())?;
    if let Some(check) = service.checks.first() {
        return crate::instance::probe::probe_for(app, inst, service.internal_port, check);
    }
    let default = anyedge_config::Check {
        kind: CheckKind::Http { path: "/".into() },
        interval: PROBE_TIMEOUT,
        timeout: PROBE_TIMEOUT,
        grace_period: Duration::ZERO,
        unhealthy_threshold: 1,
        healthy_threshold: 1,
    };
    let mut probe = crate::instance::probe::probe_for(app, inst, service.internal_port, &default)?;
    probe.pass = Pass::AnyBut(app.config.outlier.gateway_errors.clone());
    probe.h2 = service.http_options.h2_backend;
    Some(probe)
}
