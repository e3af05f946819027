//! The state of one active check as a pure machine: results and their times in, transitions out.
//! No clock, no sockets, so thresholds and the grace period are tested without waiting.

use anyedge_config::Check;
use std::time::{Duration, Instant};

/// What one result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing: still passing, still failing, or not enough results in a row yet.
    None,
    /// `unhealthy_threshold` failures in a row: the instance leaves placement.
    Failing,
    /// `healthy_threshold` passes in a row while failing: the instance comes back.
    Recovered,
}

/// One check of one instance. It starts passing: an instance nobody has checked yet is healthy.
#[derive(Debug, Clone)]
pub struct CheckState {
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    /// Failures before this instant do not count (the instance may still be starting).
    grace_until: Instant,
    failing: bool,
    passes: u32,
    failures: u32,
}

impl CheckState {
    /// A check that started at `started`. Thresholds below 1 act as 1.
    pub fn new(
        unhealthy_threshold: u32,
        healthy_threshold: u32,
        started: Instant,
        grace: Duration,
    ) -> CheckState {
        CheckState {
            unhealthy_threshold: unhealthy_threshold.max(1),
            healthy_threshold: healthy_threshold.max(1),
            grace_until: started + grace,
            failing: false,
            passes: 0,
            failures: 0,
        }
    }

    /// The state machine of `check`, started at `started`.
    pub fn for_check(check: &Check, started: Instant) -> CheckState {
        Self::new(
            check.unhealthy_threshold,
            check.healthy_threshold,
            started,
            check.grace_period,
        )
    }

    /// Record one result obtained at `now`.
    pub fn record(&mut self, passed: bool, now: Instant) -> Transition {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if self.failing && self.passes >= self.healthy_threshold {
                self.failing = false;
                return Transition::Recovered;
            }
        } else {
            if now < self.grace_until {
                return Transition::None;
            }
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if !self.failing && self.failures >= self.unhealthy_threshold {
                self.failing = true;
                return Transition::Failing;
            }
        }
        Transition::None
    }

    /// Whether the check holds its instance out of placement now.
    pub fn failing(&self) -> bool {
        self.failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Transition::{Failing, None as Nothing, Recovered};

    fn run(state: &mut CheckState, t0: Instant, results: &[bool]) -> Vec<Transition> {
        results
            .iter()
            .enumerate()
            .map(|(i, &ok)| state.record(ok, t0 + Duration::from_secs(i as u64 + 1)))
            .collect()
    }

    #[test]
    fn health_starts_passing_and_fails_after_the_threshold() {
        let t0 = Instant::now();
        let mut s = CheckState::new(3, 2, t0, Duration::ZERO);
        assert!(!s.failing(), "unknown is healthy");
        assert_eq!(
            run(&mut s, t0, &[false, false, false, false]),
            [Nothing, Nothing, Failing, Nothing]
        );
        assert!(s.failing());
    }

    #[test]
    fn health_failures_must_be_consecutive() {
        let t0 = Instant::now();
        let mut s = CheckState::new(2, 2, t0, Duration::ZERO);
        assert_eq!(
            run(&mut s, t0, &[false, true, false, true, false, false]),
            [Nothing, Nothing, Nothing, Nothing, Nothing, Failing]
        );
    }

    #[test]
    fn health_recovers_after_consecutive_passes() {
        let t0 = Instant::now();
        let mut s = CheckState::new(1, 3, t0, Duration::ZERO);
        assert_eq!(
            run(
                &mut s,
                t0,
                &[false, true, true, false, true, true, true, true]
            ),
            [Failing, Nothing, Nothing, Nothing, Nothing, Nothing, Recovered, Nothing]
        );
        assert!(!s.failing());
        // and it can fail again
        assert_eq!(run(&mut s, t0, &[false]), [Failing]);
    }

    #[test]
    fn health_thresholds_of_one_flip_at_once() {
        let t0 = Instant::now();
        let mut s = CheckState::new(1, 1, t0, Duration::ZERO);
        assert_eq!(
            run(&mut s, t0, &[false, true, false, true]),
            [Failing, Recovered, Failing, Recovered]
        );
        let mut zero = CheckState::new(0, 0, t0, Duration::ZERO);
        assert_eq!(run(&mut zero, t0, &[false, true]), [Failing, Recovered]);
    }

    #[test]
    fn health_failures_in_the_grace_period_do_not_count() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut s = CheckState::new(2, 2, t0, grace);
        for i in 0..10 {
            let at = t0 + Duration::from_millis(999 * i);
            assert_eq!(s.record(false, at), Nothing, "failure {i} in grace");
        }
        assert!(!s.failing());
        // the grace period ends at t0 + 10 s exactly; failures from then on count from zero
        assert_eq!(s.record(false, t0 + grace), Nothing);
        assert_eq!(s.record(false, t0 + grace), Failing);
    }

    #[test]
    fn health_state_is_built_from_a_check() {
        let check = anyedge_config::Check {
            kind: anyedge_config::CheckKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            grace_period: Duration::from_secs(5),
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        };
        let t0 = Instant::now();
        let mut s = CheckState::for_check(&check, t0);
        assert_eq!(s.record(false, t0 + Duration::from_secs(4)), Nothing);
        assert_eq!(s.record(false, t0 + Duration::from_secs(5)), Nothing);
        assert_eq!(s.record(false, t0 + Duration::from_secs(6)), Failing);
        assert_eq!(s.record(true, t0 + Duration::from_secs(7)), Recovered);
    }
}
