//! Live state that outlives snapshots: per-app connection budgets and per-instance in-flight
//! counts and connect-failure backoff. Guards hold these, never a snapshot.

use anyedge_admission::Budget;
use anyedge_core::InstanceId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Backoff after consecutive connect failures: 250 ms doubling up to 30 s.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Consecutive connect failures after which an instance leaves placement (passive ejection)
/// until its backoff ends; the next attempt after that is its probe.
pub const EJECT_AFTER: u32 = 3;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// Live state of one app on this node.
#[derive(Default)]
pub struct AppLive {
    /// Client connections open for the app (`limits.max_connections`).
    pub connections: Budget,
}

/// Live state of one instance as seen from this node.
#[derive(Default)]
pub struct InstanceLive {
    /// Connections (TCP) or requests (HTTP) in flight to it from this node.
    pub inflight: Budget,
    consecutive_failures: AtomicU32,
    backoff_until: AtomicU64,
    /// Active checks currently failing for it (held by [`FailingCheck`] guards).
    failing_checks: Arc<AtomicU32>,
}

/// One active check of an instance in its failing state; the instance is unhealthy while any
/// exists. Dropping it (the check passed again, or the check was removed) restores the count.
pub struct FailingCheck {
    count: Arc<AtomicU32>,
}

impl Drop for FailingCheck {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InstanceLive {
    pub fn connect_failed(&self, now: Instant) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let shift = failures.saturating_sub(1).min(16);
        let backoff = BACKOFF_BASE.saturating_mul(1 << shift).min(BACKOFF_MAX);
        self.backoff_until
            .store(nanos_since_epoch(now + backoff), Ordering::Release);
    }

    pub fn connect_succeeded(&self) {
        if self.consecutive_failures.swap(0, Ordering::AcqRel) != 0 {
            self.backoff_until.store(0, Ordering::Release);
        }
    }

    /// Failed recently enough that other instances should be tried first.
    pub fn backing_off(&self, now: Instant) -> bool {
        self.backoff_until.load(Ordering::Acquire) > nanos_since_epoch(now)
    }

    /// Left placement after [`EJECT_AFTER`] consecutive connect failures, until the backoff ends.
    pub fn ejected(&self, now: Instant) -> bool {
        self.consecutive_failures() >= EJECT_AFTER && self.backing_off(now)
    }

    /// Active checks pass and not passively ejected.
    pub fn healthy(&self, now: Instant) -> bool {
        self.failing_checks.load(Ordering::Acquire) == 0 && !self.ejected(now)
    }

    /// Mark one active check as failing until the guard is dropped.
    pub fn check_failing(&self) -> FailingCheck {
        self.failing_checks.fetch_add(1, Ordering::AcqRel);
        FailingCheck {
            count: self.failing_checks.clone(),
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Acquire)
    }
}

/// The registry of live state, keyed by app name and stable instance id.
#[derive(Default)]
pub struct LiveRegistry {
    apps: Mutex<HashMap<Arc<str>, Arc<AppLive>>>,
    instances: Mutex<HashMap<InstanceId, Arc<InstanceLive>>>,
}

impl LiveRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn app(&self, name: &Arc<str>) -> Arc<AppLive> {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.entry(name.clone()).or_default().clone()
    }

    pub fn instance(&self, id: &InstanceId) -> Arc<InstanceLive> {
        let mut map = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(id.clone()).or_default().clone()
    }

    /// Forget state nobody uses: not in the catalog any more and nothing in flight.
    pub fn retain(
        &self,
        keep_app: impl Fn(&str) -> bool,
        keep_instance: impl Fn(&InstanceId) -> bool,
    ) {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.retain(|name, live| keep_app(name) || live.connections.in_use() > 0);
        drop(apps);
        let mut map = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.retain(|id, live| keep_instance(id) || live.inflight.in_use() > 0);
    }

    pub fn instance_count(&self) -> usize {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_clears() {
        let live = InstanceLive::default();
        let t0 = Instant::now();
        assert!(!live.backing_off(t0));
        live.connect_failed(t0);
        assert!(live.backing_off(t0));
        assert!(!live.backing_off(t0 + Duration::from_millis(300)));
        live.connect_failed(t0);
        live.connect_failed(t0);
        assert!(live.backing_off(t0 + Duration::from_millis(900)));
        live.connect_succeeded();
        assert!(!live.backing_off(t0));
        assert_eq!(live.consecutive_failures(), 0);
    }

    #[test]
    fn ejection_and_failing_checks_make_it_unhealthy() {
        let live = InstanceLive::default();
        let t0 = Instant::now();
        for _ in 0..EJECT_AFTER - 1 {
            live.connect_failed(t0);
        }
        assert!(live.healthy(t0), "a couple of failures only back off");
        live.connect_failed(t0);
        assert!(!live.healthy(t0));
        assert!(
            live.healthy(t0 + Duration::from_secs(31)),
            "probe after backoff"
        );
        live.connect_succeeded();
        let failing = live.check_failing();
        assert!(!live.healthy(t0));
        drop(failing);
        assert!(live.healthy(t0));
    }

    #[test]
    fn backoff_is_capped() {
        let live = InstanceLive::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            live.connect_failed(t0);
        }
        assert!(live.backing_off(t0 + Duration::from_secs(29)));
        assert!(!live.backing_off(t0 + Duration::from_secs(31)));
    }

    #[test]
    fn retain_keeps_what_is_in_flight() {
        let reg = LiveRegistry::new();
        let a = InstanceId::new("app", "a");
        let b = InstanceId::new("app", "b");
        let guard = reg.instance(&a).inflight.acquire();
        reg.instance(&b);
        reg.retain(|_| false, |_| false);
        assert_eq!(reg.instance_count(), 1);
        drop(guard);
        reg.retain(|_| false, |_| false);
        assert_eq!(reg.instance_count(), 0);
    }
}
