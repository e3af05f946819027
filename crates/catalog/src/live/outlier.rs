//! Passive outlier detection for one instance, as Envoy's: requests that fail in a row (no
//! response head in time, the connection failed after the request was written, a gateway-error
//! status from the instance) eject it from placement for a while, longer each time in a row.
//! It comes back when a probe the node sends itself passes (`anyedge-edge`'s
//! `instance/outlier.rs` runs it), never by way of a client's request, unless it was the last
//! resort.
//!
//! Pure state with the clock passed in: the caller says what happened and when. A success costs
//! one relaxed load while nothing failed; failures and the ejections they cause take a lock (they
//! are rare, and it keeps the count, the ejection and its length consistent across shards).

use super::nanos_since_epoch;
use anyedge_config::model::Outlier;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One instance's failures in a row and its ejection.
///
/// While ejected (`until` in the future) new failures and successes are ignored: they come from
/// requests placed before the ejection, or sent to it as the last resort. Once the ejection ends
/// the instance stays held out ([`Self::held`]) until a success: the node's own probe (or a
/// request sent to it as the last resort). The failure count is still at the threshold, so a
/// failed probe ejects again at once (for twice as long); a success clears everything.
#[derive(Default)]
pub struct OutlierState {
    /// Failures in a row; non-zero while `until` is set. Read on every success.
    failures: AtomicU32,
    /// When the last ejection ends (ns since the epoch); 0: no ejection since the last success.
    until: AtomicU64,
    /// Ejections in a row since the last success; its lock serialises every change.
    ejections: Mutex<u32>,
    /// A task probes the instance until it passes ([`Self::claim_prober`]): one at a time.
    prober: AtomicBool,
}

/// An ejection that a failure caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// How long the instance is out.
    pub length: Duration,
    /// Ejections in a row, this one included (1 for the first since a success).
    pub nth: u32,
}

impl OutlierState {
    /// A response that is not a failure. The common case (nothing failed) is one relaxed load.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.succeeded_at(Instant::now());
        }
    }

    /// [`Self::succeeded`] at `now`: clears the count and the ejection history, unless the
    /// instance is ejected right now.
    pub fn succeeded_at(&self, now: Instant) {
        let mut ejections = self
            .ejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.ejected(now) {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.until.store(0, Ordering::Release);
        *ejections = 0;
    }

    /// A failed request at `now`; the ejection it caused, if it reached the threshold.
    pub fn failed(&self, now: Instant, policy: &Outlier) -> Option<Ejection> {
        if !policy.enabled() {
            return None;
        }
        let mut ejections = self
            .ejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.ejected(now) {
            return None;
        }
        let failures = self.failures.load(Ordering::Relaxed).saturating_add(1);
        self.failures.store(failures, Ordering::Relaxed);
        if failures < policy.consecutive_failures {
            return None;
        }
        *ejections = ejections.saturating_add(1);
        let length = policy.ejection(*ejections);
        let until = nanos_since_epoch(now + length).max(1);
        self.until.store(until, Ordering::Release);
        Some(Ejection {
            length,
            nth: *ejections,
        })
    }

    /// Out of placement until its ejection ends.
    pub fn ejected(&self, now: Instant) -> bool {
        self.until.load(Ordering::Acquire) > nanos_since_epoch(now)
    }

    /// How long its ejection still runs at `now` (zero once over, or without one).
    pub fn ejection_left(&self, now: Instant) -> Duration {
        let until = self.until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(nanos_since_epoch(now)))
    }

    /// Ejected, or its ejection ended and nothing has succeeded since (its probe is due or in
    /// flight): out of placement but as the last resort.
    pub fn held(&self) -> bool {
        self.until.load(Ordering::Acquire) != 0
    }

    /// Become the one task that probes this instance; `false` if one does already. The task
    /// calls [`Self::release_prober`] when it stops.
    pub fn claim_prober(&self) -> bool {
        !self.prober.swap(true, Ordering::AcqRel)
    }

    pub fn release_prober(&self) {
        self.prober.store(false, Ordering::Release);
    }

    /// Its ejection ended and no request has succeeded since: its probe is due.
    pub fn probing(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until != 0 && until <= nanos_since_epoch(now)
    }

    /// Failures in a row now.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
