//! The edge's traffic policy for one client of one app (`docs/http.md`, "Traffic policy"):
//! access rules (the app's, then its service's) and rate limits, decided before admission and
//! placement, so a refused client costs a lookup and a count. An app with neither costs one
//! branch per request. The retry budget is asked by the attempt loops ([`allow_retry`]); its
//! requests are those the app's metrics count anyway, so it adds nothing per request.

use anyedge_backhaul::retry::RetryElsewhere;
use anyedge_catalog::{now_nanos, AppEntry, LimitScope};
use anyedge_config::{Access, Service};
use anyedge_telemetry::{AppMetrics, ErrorCode, RetryReason};
use std::fmt;
use std::net::IpAddr;

/// Why a client was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// An access rule (its name: `deny 203.0.113.9/32`, `not_allowed`).
    Denied { rule: String },
    /// Over a rate limit; one more fits in `retry_after` seconds.
    Limited { scope: LimitScope, retry_after: u64 },
}

impl Refusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Denied { .. } => ErrorCode::AccessDenied,
            Refusal::Limited { .. } => ErrorCode::RateLimited,
        }
    }

    /// The route trace's text (`P-Route`).
    pub fn trace(&self) -> String {
        match self {
            Refusal::Denied { rule } => format!("refused=access_denied; rule={rule}"),
            Refusal::Limited { scope, retry_after } => format!(
                "refused=rate_limited; scope={}; retry_after={retry_after}",
                scope.as_str()
            ),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied { rule } => write!(f, "the client's address is refused ({rule})"),
            Refusal::Limited { scope, .. } => match scope {
                LimitScope::Client => f.write_str("over the app's rate limit for this client"),
                LimitScope::Total => f.write_str("over the app's total rate limit on this node"),
            },
        }
    }
}

/// Access rules, then rate limits, for a client at `ip` (canonical) of `app`'s `service`;
/// refusals are counted here (by rule and scope; the error code by the caller's answer).
#[inline]
pub(crate) fn check(
    app: &AppEntry,
    service: &Service,
    metrics: &AppMetrics,
    ip: IpAddr,
) -> Result<(), Refusal> {
    let config = &app.config;
    if config.access.is_none() && service.access.is_none() && config.rate_limit.is_none() {
        return Ok(());
    }
    check_access(config.access.as_deref(), metrics, ip)?;
    check_access(service.access.as_deref(), metrics, ip)?;
    let Some(limit) = &config.rate_limit else {
        return Ok(());
    };
    app.live
        .policy
        .admit(limit, ip, now_nanos())
        .map_err(|(scope, limited)| {
            metrics.policy.rate_limited(scope == LimitScope::Total);
            Refusal::Limited {
                scope,
                retry_after: limited.retry_after_secs(),
            }
        })
}

/// Access rules alone (a TLS port's check before its handshake: the rate limit is taken per
/// request there).
pub(crate) fn check_access_only(
    app: &AppEntry,
    service: &Service,
    metrics: &AppMetrics,
    ip: IpAddr,
) -> Result<(), Refusal> {
    check_access(app.config.access.as_deref(), metrics, ip)?;
    check_access(service.access.as_deref(), metrics, ip)
}

fn check_access(access: Option<&Access>, metrics: &AppMetrics, ip: IpAddr) -> Result<(), Refusal> {
    let Some(access) = access else { return Ok(()) };
    access.check(ip).map_err(|d| {
        let rule = access.rule_name(d);
        metrics.policy.denied(&rule);
        Refusal::Denied { rule }
    })
}

/// Whether a retry for `why` (after a worker's `refusal`, if that was the failure) spends
/// the retry budget. Not when it says nothing about the fleet's health: a pooled connection
/// found closed (the keep-alive race on our side), or a worker refusing because this edge's
/// picture is stale (an instance it does not run, a worker draining). Those cost a refusal,
/// not an instance's work, and a retry is what corrects them; `max_attempts` still bounds them.
pub(crate) fn budgeted(why: RetryReason, refusal: Option<RetryElsewhere>) -> bool {
    use anyedge_backhaul::retry::Fault;
    let stale_picture = matches!(
        refusal.map(RetryElsewhere::fault),
        Some(Fault::Catalog | Fault::Worker | Fault::Power)
    );
    why != RetryReason::StaleConnection && !stale_picture
}

/// Whether the retry budget of `app` allows one more retry for `why`; a retry it does not
/// allow is counted (`anyedge_retries_skipped_total`).
pub(crate) fn allow_retry(app: &AppEntry, metrics: &AppMetrics, why: RetryReason) -> bool {
    let b = app.config.retry_budget;
    let ok = app.live.policy.retries.try_retry(
        b.ratio,
        b.min_per_second,
        metrics.requests(),
        now_nanos(),
    );
    if !ok {
        metrics.policy.retry_skipped(why);
        tracing::debug!(app = %app.name, reason = why.as_str(), "retry not made: the app's retry budget is spent");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_that_correct_a_stale_picture_are_not_budgeted() {
        assert!(budgeted(RetryReason::Connect, None));
        assert!(budgeted(RetryReason::RefusedStream, None));
        assert!(budgeted(RetryReason::GoAway, None));
        assert!(!budgeted(RetryReason::StaleConnection, None));
        let refused = |r| budgeted(RetryReason::WorkerRefused, Some(r));
        assert!(refused(RetryElsewhere::Full));
        assert!(refused(RetryElsewhere::AppOverloaded));
        assert!(refused(RetryElsewhere::ConnectFailed));
        assert!(refused(RetryElsewhere::Unhealthy));
        assert!(!refused(RetryElsewhere::UnknownInstance));
        assert!(!refused(RetryElsewhere::Draining));
        assert!(budgeted(RetryReason::Connect, Some(RetryElsewhere::Full)));
        assert!(!budgeted(
            RetryReason::Connect,
            Some(RetryElsewhere::Draining)
        ));
    }
}
