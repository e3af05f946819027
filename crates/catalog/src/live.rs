//! Live state that outlives snapshots: per-app connection budgets and per-instance in-flight
//! counts, connect-failure backoff and outlier ejection (`live/outlier.rs`). Guards hold these,
//! never a snapshot.

mod outlier;
mod policy;
mod power;

pub use outlier::{Ejection, OutlierState};
pub use policy::{now_nanos, LimitScope, PolicyLive};
pub use power::{Power, PowerState};

use anyedge_admission::{Budget, BudgetGuard};
use anyedge_core::InstanceId;
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
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
    /// Requests (HTTP) and connections (TCP) in flight for the app (`limits.max_inflight`).
    pub inflight: Budget,
    /// Requests waiting in the app's queue.
    waiting: Budget,
    /// Woken whenever one of the app's slots (app or instance) is released while some wait.
    released: tokio::sync::Notify,
    /// Rate limits and the retry budget (`rate_limit`, `retry_budget`).
    pub policy: PolicyLive,
}

impl AppLive {
    /// Take a place in the app's queue, if fewer than `max` wait.
    pub fn enqueue(self: &Arc<Self>, max: u32) -> Option<QueueTicket> {
        self.waiting.try_acquire(max).map(|place| QueueTicket {
            _place: place,
            app: self.clone(),
        })
    }

    pub fn waiting(&self) -> u32 {
        self.waiting.in_use()
    }

    /// Take an app slot if fewer than `limit` are in flight; it wakes the queue when released.
    pub fn try_admit(self: &Arc<Self>, limit: u32) -> Option<Slot> {
        self.inflight.try_acquire(limit).map(|guard| Slot {
            guard: Some(guard),
            app: self.clone(),
        })
    }

    /// Wake every waiter: capacity was added (an instance started), not one slot freed.
    pub fn wake_all(&self) {
        self.released.notify_waiters();
    }

    /// Called after a slot was released: wake the longest waiter, if anyone waits. One slot,
    /// one waiter: waking them all would have every queued request re-run placement on every
    /// release (a thundering herd that costs the flooded app's node real CPU). A woken waiter
    /// that cannot use the slot (its constraints exclude it) waits again; waiters also look
    /// again on their own now and then (see the edge's queue), so such a slot is not lost for
    /// long. The fence pairs with the one in [`QueueTicket::recheck`] so a waiter either sees
    /// the freed slot or is woken.
    fn slot_released(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.in_use() > 0 {
            self.released.notify_one();
        }
    }
}

/// A place in an app's queue; leaving the queue is dropping it.
pub struct QueueTicket {
    _place: BudgetGuard,
    app: Arc<AppLive>,
}

impl QueueTicket {
    /// A future that completes at the next slot release. Create it, then [`Self::recheck`]
    /// (which orders the registration before the re-check), then look for a slot again, then
    /// await it: a release between the look and the await is not lost.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.app.released.notified()
    }

    /// Register `notified` and order that before the caller's next look at the counts.
    pub fn recheck(notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
        notified.enable();
        fence(Ordering::SeqCst);
    }
}

/// One in-flight slot (of the app, or of an instance on behalf of the app); releasing it wakes
/// the app's queue.
pub struct Slot {
    guard: Option<BudgetGuard>,
    app: Arc<AppLive>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.app.slot_released();
    }
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
    /// What the worker running it last reported over the load feed (see [`Reported`]).
    reported: AtomicU64,
    reported_at: AtomicU64,
    /// Passive outlier detection: requests that time out, reset or get a gateway error.
    pub outlier: OutlierState,
    /// Slots ever taken on it while it has a driver: the driver's task tells idleness by
    /// this moving.
    taken: AtomicU64,
    /// Running, starting, stopping, stopped or failed (instances with a driver).
    pub power: Power,
}

/// A report from the load feed older than this is ignored: the worker (or the link to it) is
/// gone, and placement falls back to this node's own view.
pub const REPORT_FRESH: Duration = Duration::from_secs(3);

/// A worker sends a load-feed frame at least every second. One whose instances were reported
/// and that has sent nothing for this long has gone silent (frozen, partitioned, overloaded):
/// placement holds its instances out like ejected ones, using them only when nothing else is
/// left, so new requests stop waiting on a worker that does not answer.
pub const REPORT_SILENT: Duration = Duration::from_millis(1500);

const REPORT_PRESENT: u64 = 1 << 32;
const REPORT_UNHEALTHY: u64 = 1 << 33;

/// One instance's load as the worker that runs it sees it: the worker is the truth for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// In flight on the worker, from every edge.
    pub inflight: u32,
    pub healthy: bool,
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

    /// Take a slot on this instance for `app` if fewer than `hard_limit` are in flight.
    pub fn try_take(&self, hard_limit: u32, app: &Arc<AppLive>) -> Option<Slot> {
        if self.power.driven() {
            // Only instances this node may stop count their use (a load and a branch for others).
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        self.inflight.try_acquire(hard_limit).map(|guard| Slot {
            guard: Some(guard),
            app: app.clone(),
        })
    }

    /// Left placement after [`EJECT_AFTER`] consecutive connect failures, until the backoff ends.
    pub fn ejected(&self, now: Instant) -> bool {
        self.consecutive_failures() >= EJECT_AFTER && self.backing_off(now)
    }

    /// Active checks pass, not passively ejected, and its worker does not report it unhealthy.
    pub fn healthy(&self, now: Instant) -> bool {
        self.failing_checks.load(Ordering::Acquire) == 0
            && !self.ejected(now)
            && self.reported(now).is_none_or(|r| r.healthy)
    }

    /// Out of placement as an outlier now: ejected, or its ejection over and the node's own
    /// probe not passed yet (no client request is the probe). Placement still takes it when
    /// nothing else is left.
    pub fn outlier_held(&self, now: Instant) -> bool {
        self.outlier.ejected(now) || self.outlier.held()
    }

    /// Record what the worker running it reported.
    pub fn report(&self, r: Reported, now: Instant) {
        let unhealthy = if r.healthy { 0 } else { REPORT_UNHEALTHY };
        self.reported.store(
            REPORT_PRESENT | unhealthy | u64::from(r.inflight),
            Ordering::Release,
        );
        self.reported_at
            .store(nanos_since_epoch(now), Ordering::Release);
    }

    /// Whether the worker running it reported it once and has been silent since for longer
    /// than [`REPORT_SILENT`]. Never for an instance no worker reports (one on this node).
    pub fn silent(&self, now: Instant) -> bool {
        self.report_age(now)
            .is_some_and(|(_, age)| age > REPORT_SILENT.as_nanos() as u64)
    }

    /// How long ago the worker running it last reported it over the load feed (`None`: never,
    /// as for an instance on this node): the feed's freshness on the dashboard.
    pub fn last_report_age(&self, now: Instant) -> Option<Duration> {
        self.report_age(now)
            .map(|(_, age)| Duration::from_nanos(age))
    }

    /// The last report's bits and its age in nanoseconds, if the worker ever reported.
    fn report_age(&self, now: Instant) -> Option<(u64, u64)> {
        let bits = self.reported.load(Ordering::Acquire);
        if bits & REPORT_PRESENT == 0 {
            return None;
        }
        let at = self.reported_at.load(Ordering::Acquire);
        Some((bits, nanos_since_epoch(now).saturating_sub(at)))
    }

    /// The worker's last report, if recent enough to trust ([`REPORT_FRESH`]).
    pub fn reported(&self, now: Instant) -> Option<Reported> {
        let (bits, age) = self.report_age(now)?;
        if age > REPORT_FRESH.as_nanos() as u64 {
            return None;
        }
        Some(Reported {
            inflight: bits as u32,
            healthy: bits & REPORT_UNHEALTHY == 0,
        })
    }

    /// In flight as placement should count it: the larger of this node's own count and the
    /// worker's recent report (which counts every edge, this one included, as of its sending).
    pub fn load(&self, now: Instant) -> u32 {
        let own = self.inflight.in_use();
        self.reported(now).map_or(own, |r| r.inflight.max(own))
    }

    /// Mark one active check as failing until the guard is dropped.
    pub fn check_failing(&self) -> FailingCheck {
        self.failing_checks.fetch_add(1, Ordering::AcqRel);
        FailingCheck {
            count: self.failing_checks.clone(),
        }
    }

    /// Slots taken on it since it was first seen (tries that found it full included).
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Acquire)
    }
}

/// Live state of another node, as this node reaches it over backhaul.
#[derive(Default)]
pub struct PeerLive {
    /// Smoothed RTT of this node's backhaul connections to it (`TCP_INFO`), in microseconds;
    /// 0 until measured.
    pub rtt_us: Arc<AtomicU32>,
}

impl PeerLive {
    pub fn rtt_us(&self) -> Option<u32> {
        Some(self.rtt_us.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }
}

/// The registry of live state, keyed by app name, stable instance id and node id.
#[derive(Default)]
pub struct LiveRegistry {
    apps: Mutex<HashMap<Arc<str>, Arc<AppLive>>>,
    instances: Mutex<HashMap<InstanceId, Arc<InstanceLive>>>,
    peers: Mutex<HashMap<Arc<str>, Arc<PeerLive>>>,
    /// Apps and instances gone from the catalog while something was in flight: looked at
    /// again at each [`LiveRegistry::forget`] until they are idle (or named again).
    lingering: Mutex<(Vec<Arc<str>>, Vec<InstanceId>)>,
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

    /// The live state of another node (kept for the process's life: a handful per cluster).
    pub fn peer(&self, id: &Arc<str>) -> Arc<PeerLive> {
        let mut map = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
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

    /// Forget the state of `apps` and `instances`, gone from the catalog in the generation
    /// just built, unless the catalog names them (`named_app`, `named_instance`: the new
    /// snapshot) or something is in flight; those in flight are looked at again next time.
    /// Costs what changed, where [`LiveRegistry::retain`] costs the whole registry.
    pub fn forget(
        &self,
        apps: Vec<Arc<str>>,
        instances: Vec<InstanceId>,
        named_app: impl Fn(&str) -> bool,
        named_instance: impl Fn(&InstanceId) -> bool,
    ) {
        let mut lingering = self
            .lingering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (old_apps, old_instances) = &mut *lingering;
        old_apps.extend(apps);
        old_instances.extend(instances);
        let mut map = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        old_apps.retain(|name| {
            if named_app(name) {
                return false;
            }
            let busy = map.get(name).is_some_and(|l| l.connections.in_use() > 0);
            if !busy {
                map.remove(name);
            }
            busy
        });
        drop(map);
        let mut map = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        old_instances.retain(|id| {
            if named_instance(id) {
                return false;
            }
            let busy = map.get(id).is_some_and(|l| l.inflight.in_use() > 0);
            if !busy {
                map.remove(id);
            }
            busy
        });
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
    fn a_fresh_worker_report_counts_and_an_old_one_does_not() {
        let live = InstanceLive::default();
        let t0 = Instant::now();
        assert_eq!(live.reported(t0), None);
        let _mine = live.inflight.try_acquire(10);
        assert_eq!(live.load(t0), 1);
        live.report(
            Reported {
                inflight: 7,
                healthy: true,
            },
            t0,
        );
        // The worker counts every edge: its number wins while larger, ours when it is.
        assert_eq!(live.load(t0), 7);
        assert!(live.healthy(t0));
        live.report(
            Reported {
                inflight: 0,
                healthy: false,
            },
            t0,
        );
        assert_eq!(live.load(t0), 1);
        assert!(!live.healthy(t0), "the worker says unhealthy");
        let later = t0 + REPORT_FRESH + Duration::from_millis(1);
        assert_eq!(live.reported(later), None);
        assert!(live.healthy(later), "a stale report is not trusted");
    }

    #[test]
    fn a_worker_that_stops_reporting_goes_silent() {
        let live = InstanceLive::default();
        let t0 = Instant::now();
        assert!(!live.silent(t0 + Duration::from_secs(60)), "never reported");
        let report = Reported {
            inflight: 0,
            healthy: true,
        };
        live.report(report, t0);
        assert!(!live.silent(t0 + REPORT_SILENT));
        assert!(live.silent(t0 + REPORT_SILENT + Duration::from_millis(1)));
        live.report(report, t0 + Duration::from_secs(2));
        assert!(!live.silent(t0 + Duration::from_secs(3)), "reporting again");
    }

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
    fn releasing_a_slot_wakes_the_queue() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let app = Arc::new(AppLive::default());
            let inst = InstanceLive::default();
            let held = inst.try_take(1, &app).expect("first slot");
            assert!(inst.try_take(1, &app).is_none());
            let ticket = app.enqueue(1).expect("queue has room");
            assert!(app.enqueue(1).is_none(), "queue of one is full");
            let notified = ticket.notified();
            tokio::pin!(notified);
            QueueTicket::recheck(notified.as_mut());
            assert!(inst.try_take(1, &app).is_none());
            drop(held);
            tokio::time::timeout(Duration::from_secs(1), notified)
                .await
                .expect("woken by the release");
            assert!(inst.try_take(1, &app).is_some());
        });
        rt.block_on(async {
            let app = Arc::new(AppLive::default());
            let ticket = app.enqueue(1).expect("queue has room");
            assert_eq!(app.waiting(), 1);
            drop(ticket);
            assert_eq!(app.waiting(), 0);
        });
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
    fn forget_keeps_what_is_in_flight_until_it_is_idle_or_named_again() {
        let reg = LiveRegistry::new();
        let a = InstanceId::new("app", "a");
        let b = InstanceId::new("app", "b");
        let guard = reg.instance(&a).inflight.acquire();
        reg.instance(&b);
        reg.forget(Vec::new(), vec![a.clone(), b.clone()], |_| false, |_| false);
        assert_eq!(reg.instance_count(), 1, "a is in flight");
        drop(guard);
        // a is looked at again by the next generation, although that one removed nothing.
        reg.forget(Vec::new(), Vec::new(), |_| false, |_| false);
        assert_eq!(reg.instance_count(), 0);
        // Named again before it went idle: kept, and no longer lingering.
        let guard = reg.instance(&a).inflight.acquire();
        reg.forget(Vec::new(), vec![a.clone()], |_| false, |_| false);
        drop(guard);
        reg.forget(Vec::new(), Vec::new(), |_| false, |id| *id == a);
        reg.forget(Vec::new(), Vec::new(), |_| false, |_| false);
        assert_eq!(reg.instance_count(), 1, "named again, so not lingering");
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
