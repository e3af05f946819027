//! Whether an instance with a driver runs (`docs/on-demand.md`): its state (running, starting,
//! stopping, stopped, failed), the one start a request may ask for (a compare-and-swap, so
//! concurrent requests join one start), the backoff after a failed start, and when it last
//! served. Instances without a driver stay `Running` and nothing here is read for them.

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
