//! The retry budget of one app on this node (`retry_budget = { ratio, min_per_second }`, as
//! Finagle's and linkerd's, the rate form of Envoy's): a retry is made only while the
//! retries of the last [`WINDOW`] stay within `ratio` of the requests in it plus
//! `min_per_second` for each second of it. The requests are the caller's running count (the
//! app's metrics already count them: nothing is added per request); the window is looked at
//! only when a retry is asked for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

const SECOND: u64 = 1_000_000_000;
/// How far back "recent" requests go.
pub const WINDOW: u64 = 10 * SECOND;

/// One point of the counters' history.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    requests: u64,
    retries: u64,
}

#[derive(Debug, Default)]
pub struct RetryBudget {
    retries: AtomicU64,
    /// Samples at least a second apart, the oldest no older than needed to cover the window.
    history: Mutex<VecDeque<Sample>>,
}

impl RetryBudget {
    /// Whether one more retry fits at `now` (nanoseconds, a clock starting above zero), with
    /// `requests` the app's requests (and connections) so far, a count that only grows; when
    /// it fits, it is counted as made.
    pub fn try_retry(&self, ratio: f64, min_per_second: u32, requests: u64, now: u64) -> bool {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let retries = self.retries.load(Ordering::Relaxed);
        if history
            .back()
            .is_none_or(|s| now.saturating_sub(s.at) >= SECOND)
        {
            history.push_back(Sample {
                at: now,
                requests,
                retries,
            });
        }
        // The base: the newest sample at least WINDOW old, else the oldest one.
        while history.len() > 1 && history[1].at.saturating_add(WINDOW) <= now {
            history.pop_front();
        }
        let Some(base) = history.front().copied() else {
            return false;
        };
        // At least a second, so the floor allows `min_per_second` at once.
        let span = now.saturating_sub(base.at).max(SECOND);
        let earned = ratio * requests.saturating_sub(base.requests) as f64
            + f64::from(min_per_second) * span as f64 / SECOND as f64;
        let made = (retries - base.retries) as f64;
        if made + 1.0 > earned {
            return false;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 100 * SECOND;

    #[test]
    fn the_floor_allows_min_per_second_without_requests() {
        let b = RetryBudget::default();
        let made = (0..100).filter(|_| b.try_retry(0.2, 10, 0, T0)).count();
        assert_eq!(made, 10);
        // Two seconds of the window: ten more.
        let made = (0..100)
            .filter(|_| b.try_retry(0.2, 10, 0, T0 + 2 * SECOND))
            .count();
        assert_eq!(made, 10);
    }

    #[test]
    fn retries_follow_the_ratio_of_recent_requests() {
        let b = RetryBudget::default();
        let mut made = 0;
        let (mut t, mut requests) = (T0, 0);
        // 1,000 requests a second for 30 s, each wanting 2 retries: a fleet-wide failure.
        for _ in 0..30_000 {
            t += SECOND / 1000;
            requests += 1;
            made += usize::from(b.try_retry(0.2, 0, requests, t));
            made += usize::from(b.try_retry(0.2, 0, requests, t));
        }
        // 20 % of 30,000.
        assert!((5_900..=6_000).contains(&made), "{made}");
        // Requests stop: what they earned is spent, nothing more is made.
        assert!(!b.try_retry(0.2, 0, requests, t + SECOND));
        // Ten seconds of quiet later, the old requests earn nothing.
        requests += 100;
        let later = (0..100)
            .filter(|_| b.try_retry(0.2, 0, requests, t + 20 * SECOND))
            .count();
        assert_eq!(later, 20);
    }

    #[test]
    fn a_ratio_of_zero_with_no_floor_makes_none() {
        let b = RetryBudget::default();
        assert!(!b.try_retry(0.0, 0, 1, T0));
    }
}
