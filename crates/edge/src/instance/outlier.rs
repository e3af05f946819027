//! What passive outlier detection learns from one request to an instance this node sends to
//! itself (the edge for its own instances, the worker for every instance it runs): a response
//! head is a success unless its status is one of the app's `outlier.gateway_errors`; a timeout
//! or a connection that failed after the request was written is a failure. The state machine is
//! `anyedge_catalog::OutlierState`; here an ejection is counted and logged, and the probe that
//! brings the instance back is started ([`prober`]).

mod prober;

use anyedge_catalog::{AppEntry, InstanceEntry};
use anyedge_telemetry::{AppMetrics, OutlierReason};
use std::sync::Arc;
use std::time::Instant;

/// The instance answered with `status`. A success is one relaxed load while nothing failed.
pub(crate) fn answered(
    app: &AppEntry,
    inst: &InstanceEntry,
    metrics: &Arc<AppMetrics>,
    status: http::StatusCode,
) {
    if app.config.outlier.is_gateway_error(status.as_u16()) {
        failed(app, inst, metrics, OutlierReason::GatewayError);
    } else {
        inst.live.outlier.succeeded();
    }
}

/// A request to the instance failed in a way that counts (`reason`); at the app's threshold
/// the instance is ejected.
pub(crate) fn failed(
    app: &AppEntry,
    inst: &InstanceEntry,
    metrics: &Arc<AppMetrics>,
    reason: OutlierReason,
) {
    let policy = &app.config.outlier;
    let Some(ejection) = inst.live.outlier.failed(Instant::now(), policy) else {
        return;
    };
    metrics.outlier_ejection(reason);
    tracing::warn!(
        app = %app.name,
        instance = %inst.id,
        reason = reason.as_str(),
        failures = inst.live.outlier.failures(),
        ejection = ?ejection.length,
        in_a_row = ejection.nth,
        "instance ejected as an outlier: out of placement until the ejection ends and a probe passes"
    );
    prober::start(app, inst, metrics);
}
