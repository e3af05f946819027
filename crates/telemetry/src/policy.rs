//! Per-app counters of the traffic policy: clients refused by an access rule (by rule),
//! requests and connections over a rate limit (by scope), and retries the retry budget did not
//! allow (by the retry's reason). Every family is rendered for every app.

use crate::metrics::RetryReason;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Over which rate limit.
pub const RATE_SCOPES: [&str; 2] = ["client", "total"];

#[derive(Default)]
pub struct PolicyMetrics {
    /// By rule name (`deny 203.0.113.9/32`, `not_allowed`: from the config, never a client).
    /// Touched only by refused clients; a map, since the rules are the app's own.
    denied: Mutex<BTreeMap<String, u64>>,
    rate_limited: [AtomicU64; RATE_SCOPES.len()],
    retries_skipped: [AtomicU64; RetryReason::ALL.len()],
}

impl PolicyMetrics {
    /// A client refused by the access rule named `rule`.
    pub fn denied(&self, rule: &str) {
        let mut m = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        match m.get_mut(rule) {
            Some(n) => *n += 1,
            None => {
                m.insert(rule.to_string(), 1);
            }
        }
    }

    pub fn denials(&self, rule: &str) -> u64 {
        let m = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(rule).copied().unwrap_or(0)
    }

    /// A request or connection over a rate limit; `total`: the app's, else the client's.
    pub fn rate_limited(&self, total: bool) {
        self.rate_limited[usize::from(total)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limits(&self, total: bool) -> u64 {
        self.rate_limited[usize::from(total)].load(Ordering::Relaxed)
    }

    /// A retry for `why` that the retry budget did not allow.
    pub fn retry_skipped(&self, why: RetryReason) {
        self.retries_skipped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retries_skipped(&self, why: RetryReason) -> u64 {
        self.retries_skipped[why as usize].load(Ordering::Relaxed)
    }
}

/// The three families, for every app in `apps`.
pub(crate) fn render(out: &mut String, apps: &[(String, Arc<crate::AppMetrics>)]) {
    crate::metrics::family(
        out,
        "anyedge_access_denied_total",
        "counter",
        "Requests and connections refused by an access rule, by rule (`not_allowed`: in no allow block).",
    );
    for (app, m) in apps {
        let denied = m
            .policy
            .denied
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (rule, n) in denied.iter() {
            let _ = writeln!(
                out,
                "anyedge_access_denied_total{{app=\"{app}\",rule=\"{rule}\"}} {n}"
            );
        }
    }
    crate::metrics::family(
        out,
        "anyedge_rate_limited_total",
        "counter",
        "Requests and new connections refused by the app's rate limit, by scope (client or total).",
    );
    for (app, m) in apps {
        for (i, scope) in RATE_SCOPES.iter().enumerate() {
            let n = m.policy.rate_limited[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "anyedge_rate_limited_total{{app=\"{app}\",scope=\"{scope}\"}} {n}"
            );
        }
    }
    crate::metrics::family(
        out,
        "anyedge_retries_skipped_total",
        "counter",
        "Retries not made because the app's retry budget was spent, by the retry's reason.",
    );
    for (app, m) in apps {
        for why in RetryReason::ALL {
            let n = m.policy.retries_skipped(why);
            let _ = writeln!(
                out,
                "anyedge_retries_skipped_total{{app=\"{app}\",reason=\"{}\"}} {n}",
                why.as_str()
            );
        }
    }
}
