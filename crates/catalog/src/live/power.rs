//! Whether an instance with a driver runs (`docs/on-demand.md`): its state (running, starting,
//! stopping, stopped, failed), the one start a request may ask for (a compare-and-swap, so
//! concurrent requests join one start), the backoff after a failed start, and when it last
//! served. Instances without a driver stay `Running` and nothing here is read for them.
//!
//! On an edge, an instance with a driver on another node (its worker) has a state here too:
//! what the worker's load feed last said, and `Starting` while this edge asks the worker for a
//! start over backhaul (`docs/on-demand.md`, "Over backhaul").

use super::{epoch, nanos_since_epoch};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Backoff after a failed start: 1 s doubling up to 60 s.
const FAILED_BASE: Duration = Duration::from_secs(1);
const FAILED_MAX: Duration = Duration::from_secs(60);

/// An instance's state (`DESIGN.md`, "Contracts added in the second round").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PowerState {
    Running = 0,
    Starting = 1,
    Stopping = 2,
    Stopped = 3,
    Failed = 4,
}

impl PowerState {
    pub const ALL: [PowerState; 5] = [
        PowerState::Running,
        PowerState::Starting,
        PowerState::Stopping,
        PowerState::Stopped,
        PowerState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Running => "running",
            PowerState::Starting => "starting",
            PowerState::Stopping => "stopping",
            PowerState::Stopped => "stopped",
            PowerState::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> PowerState {
        match v {
            1 => PowerState::Starting,
            2 => PowerState::Stopping,
            3 => PowerState::Stopped,
            4 => PowerState::Failed,
            _ => PowerState::Running,
        }
    }
}

/// One instance's power state, shared by every snapshot that has it.
pub struct Power {
    state: AtomicU8,
    /// Every change of `state` is sent here (the value is the new state), so a request waiting
    /// for a start and the node's driver task wake at once. Made at the first subscriber: an
    /// instance without a driver never has one.
    changed: std::sync::OnceLock<tokio::sync::watch::Sender<PowerState>>,
    failures: AtomicU32,
    failed_until: AtomicU64,
    /// Nanoseconds since the epoch of the last activity the driver's task saw.
    last_active: AtomicU64,
    /// This node runs it with a driver.
    driven: AtomicBool,
    /// Another node runs it with a driver: this node asks that node for its starts.
    remote: AtomicBool,
    /// Nanoseconds since the epoch until which the load feed's reports do not set the state:
    /// this edge's own start request is under way (`u64::MAX`), or just answered (a frame made
    /// before the answer may still arrive after it).
    held_until: AtomicU64,
}

impl Default for Power {
    fn default() -> Self {
        Power {
            state: AtomicU8::new(PowerState::Running as u8),
            changed: std::sync::OnceLock::new(),
            failures: AtomicU32::new(0),
            failed_until: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            driven: AtomicBool::new(false),
            remote: AtomicBool::new(false),
            held_until: AtomicU64::new(0),
        }
    }
}

impl Power {
    /// The snapshot gives it a driver on this node (`true`) or none. An instance newly driven
    /// is `Starting` until the driver's task has looked whether its address accepts a
    /// connection (then `Running`, else `Stopped`): requests meanwhile wait for that look
    /// rather than start it twice. One no longer driven is `Running`.
    pub fn drive(&self, driven: bool) {
        if self.driven.swap(driven, Ordering::AcqRel) != driven {
            self.set(match driven {
                true => PowerState::Starting,
                false => PowerState::Running,
            });
        }
    }

    pub fn driven(&self) -> bool {
        self.driven.load(Ordering::Acquire)
    }

    /// The snapshot says another node runs it with a driver (`true`) or not. Its state is then
    /// what that node reports (`Running` until it does: a request sent meanwhile to a stopped
    /// instance is refused `not_running`, which sets it `Stopped` here). One no longer driven
    /// anywhere is `Running`.
    pub fn drive_remote(&self, remote: bool) {
        if self.remote.swap(remote, Ordering::AcqRel) && !remote && !self.driven() {
            self.set(PowerState::Running);
        }
    }

    /// Another node runs it with a driver (see [`Power::drive_remote`]).
    pub fn remote(&self) -> bool {
        self.remote.load(Ordering::Acquire)
    }

    /// It has a driver, on this node or another: it may be stopped, and can be started.
    pub fn on_demand(&self) -> bool {
        self.driven() || self.remote()
    }

    /// The state a worker reported for it (load feed, or a refusal), unless this node's own
    /// start request holds it ([`Power::hold`]). Only a change wakes the waiters.
    pub fn report(&self, to: PowerState, now: Instant) {
        if self.held_until.load(Ordering::Acquire) > nanos(now) || self.state() == to {
            return;
        }
        self.set(to);
    }

    /// Reports do not set the state until `until` (`None`: until held again with a time).
    pub fn hold(&self, until: Option<Instant>) {
        let until = until.map_or(u64::MAX, nanos);
        self.held_until.store(until, Ordering::Release);
    }

    /// How long a failed instance is not started again, as of `now` (zero when it may be).
    pub fn backoff_left(&self, now: Instant) -> Duration {
        let until = self.failed_until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(nanos(now)))
    }

    pub fn state(&self) -> PowerState {
        PowerState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn running(&self) -> bool {
        self.state.load(Ordering::Acquire) == PowerState::Running as u8
    }

    /// Set the state (the driver's task, which owns the instance's starts and stops).
    pub fn set(&self, to: PowerState) {
        self.state.store(to as u8, Ordering::Release);
        self.notify(to);
    }

    fn notify(&self, to: PowerState) {
        if let Some(tx) = self.changed.get() {
            tx.send_replace(to);
        }
    }

    /// Move from `from` to `to` if the state is `from`; whether it moved.
    pub fn transition(&self, from: PowerState, to: PowerState) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.notify(to);
        }
        moved
    }

    /// Whether a request may ask for a start now: stopped, or failed with its backoff over.
    pub fn startable(&self, now: Instant) -> bool {
        match self.state() {
            PowerState::Stopped => true,
            PowerState::Failed => self.failed_until.load(Ordering::Acquire) <= nanos(now),
            _ => false,
        }
    }

    /// Ask for a start: `Stopped` (or `Failed` past its backoff) becomes `Starting`. Only one
    /// of many concurrent callers wins; the others see `Starting` and wait for the same start.
    pub fn request_start(&self, now: Instant) -> bool {
        self.startable(now)
            && (self.transition(PowerState::Stopped, PowerState::Starting)
                || self.transition(PowerState::Failed, PowerState::Starting))
    }

    /// A start failed: `Failed`, out of placement and not started again until a backoff of
    /// 1 s doubling with each failure in a row, up to 60 s.
    pub fn start_failed(&self, now: Instant) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let backoff = FAILED_BASE
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(FAILED_MAX);
        self.failed_until
            .store(nanos(now + backoff), Ordering::Release);
        self.set(PowerState::Failed);
    }

    /// A start succeeded: `Running`, the failure count cleared.
    pub fn started(&self, now: Instant) {
        self.failures.store(0, Ordering::Release);
        self.touch(now);
        self.set(PowerState::Running);
    }

    /// Starts that failed in a row.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Acquire)
    }

    /// A receiver of state changes (marked seen at the current state).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<PowerState> {
        self.changed
            .get_or_init(|| tokio::sync::watch::Sender::new(self.state()))
            .subscribe()
    }

    /// Note activity now (a request taken or finished).
    pub fn touch(&self, now: Instant) {
        self.last_active.store(nanos(now), Ordering::Relaxed);
    }

    /// How long nothing has touched it, as of `now`.
    pub fn idle_for(&self, now: Instant) -> Duration {
        let last = self.last_active.load(Ordering::Relaxed);
        Duration::from_nanos(nanos(now).saturating_sub(last))
    }
}

fn nanos(t: Instant) -> u64 {
    let _ = epoch();
    nanos_since_epoch(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_start_wins_and_failure_backs_off() {
        let p = Power::default();
        let t0 = Instant::now();
        assert!(p.running());
        assert!(!p.request_start(t0), "a running instance is not started");
        p.set(PowerState::Stopped);
        assert!(p.request_start(t0));
        assert!(
            !p.request_start(t0),
            "the second caller joins the first start"
        );
        assert_eq!(p.state(), PowerState::Starting);
        p.start_failed(t0);
        assert_eq!(p.state(), PowerState::Failed);
        assert!(!p.request_start(t0 + Duration::from_millis(999)));
        assert!(p.request_start(t0 + Duration::from_secs(1)));
        p.start_failed(t0);
        assert!(!p.startable(t0 + Duration::from_millis(1999)), "doubled");
        assert!(p.startable(t0 + Duration::from_secs(2)));
        p.started(t0);
        assert_eq!(p.failures(), 0);
        assert!(p.running());
    }

    #[test]
    fn state_changes_wake_subscribers() {
        let p = Power::default();
        let mut rx = p.subscribe();
        assert!(!rx.has_changed().unwrap_or(true));
        p.set(PowerState::Stopped);
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), PowerState::Stopped);
        assert!(!p.transition(PowerState::Running, PowerState::Stopping));
        assert!(!rx.has_changed().unwrap_or(true), "no change, no wake");
    }

    #[test]
    fn a_remote_instance_follows_reports_unless_held() {
        let p = Power::default();
        let t0 = Instant::now();
        p.drive_remote(true);
        assert!(p.on_demand() && !p.driven());
        assert!(p.running(), "running until its worker says otherwise");
        p.report(PowerState::Stopped, t0);
        assert!(p.request_start(t0));
        p.hold(None);
        p.report(PowerState::Stopped, t0);
        assert_eq!(p.state(), PowerState::Starting, "held while asking");
        p.started(t0);
        p.hold(Some(t0 + Duration::from_millis(500)));
        p.report(PowerState::Starting, t0 + Duration::from_millis(499));
        assert!(p.running(), "a frame made before the answer");
        p.report(PowerState::Stopped, t0 + Duration::from_millis(500));
        assert_eq!(p.state(), PowerState::Stopped);
        p.drive_remote(false);
        assert!(p.running() && !p.on_demand());
    }

    #[test]
    fn idle_time_counts_from_the_last_touch() {
        let p = Power::default();
        let t0 = Instant::now();
        p.touch(t0);
        assert_eq!(
            p.idle_for(t0 + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }
}
