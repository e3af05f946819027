//! The retry budget of one app on this node (`retry_budget = { ratio, min_per_second }`, as
//! Finagle's and linkerd's, the rate form of Envoy's): a retry is made while the retries of
//! the last [`WINDOW`] stay within `ratio` of the requests in it, or else while a floor of
//! `min_per_second` a second has room. The requests are the caller's running count (the
//! app's metrics already count them: nothing is added per request); the window is looked at
//! only when a retry is asked for.

use crate::rate::{Gcra, Rate};
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

/// An app's retry budget on this node. The ratio part: retries in the window may not exceed
/// `ratio` of the requests in it. The floor: beyond that, `min_per_second` retries a second
/// (a token bucket holding one second's worth), so a quiet app's lone failure is retried.
#[derive(Debug)]
pub struct RetryBudget {
    /// When the budget began: its history starts there, with no request.
    created: u64,
    retries: AtomicU64,
    floor: Gcra,
    /// Samples at least a second apart, the oldest no older than needed to cover the window.
    history: Mutex<VecDeque<Sample>>,
}

impl RetryBudget {
    /// A budget whose history starts at `now`.
    pub fn new(now: u64) -> RetryBudget {
        RetryBudget {
            created: now,
            retries: AtomicU64::new(0),
            floor: Gcra::default(),
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether one more retry fits at `now` (nanoseconds, a clock starting above zero), with
    /// `requests` the app's requests (and connections) so far, a count that only grows; when
    /// it fits, it is counted as made.
    pub fn try_retry(&self, ratio: f64, min_per_second: u32, requests: u64, now: u64) -> bool {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let retries = self.retries.load(Ordering::Relaxed);
        let newest = history.back().copied().unwrap_or(Sample {
            at: self.created,
            requests: 0,
            retries,
        });
        if history.is_empty() || now.saturating_sub(newest.at) >= WINDOW {
            // No retry in the window (one would have left a sample in it): the history starts
            // again from an estimate, the requests since the newest sample spread evenly.
            let span = now.saturating_sub(newest.at).max(1);
            let since = requests.saturating_sub(newest.requests);
            let window = span.min(WINDOW);
            let recent = (since as f64 * window as f64 / span as f64) as u64;
            history.clear();
            history.push_back(Sample {
                at: now - window,
                requests: requests - recent.min(requests),
                retries,
            });
        }
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
        let earned = ratio * requests.saturating_sub(base.requests) as f64;
        let made = retries.saturating_sub(base.retries) as f64;
        let fits = made + 1.0 <= earned
            || (min_per_second > 0
                && self
                    .floor
                    .check(Rate::new(min_per_second, min_per_second), now)
                    .is_ok());
        if fits {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 100 * SECOND;

    #[test]
    fn the_floor_allows_min_per_second_without_requests() {
        let b = RetryBudget::new(T0);
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
        let b = RetryBudget::new(T0);
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
        // Twenty seconds later, 100 more requests: spread over those 20 s, half are recent.
        requests += 100;
        let later = (0..100)
            .filter(|_| b.try_retry(0.2, 0, requests, t + 20 * SECOND))
            .count();
        assert_eq!(later, 10);
    }

    /// The requests before the first retry count: a failure that begins after 5 s of 200
    /// requests a second may retry 20 % of those 1,000 at once, and the floor's 10 more.
    #[test]
    fn requests_before_the_first_retry_count() {
        let b = RetryBudget::new(T0);
        let made = (0..1000)
            .filter(|_| b.try_retry(0.2, 10, 1000, T0 + 5 * SECOND))
            .count();
        assert_eq!(made, 210);
    }

    #[test]
    fn a_ratio_of_zero_with_no_floor_makes_none() {
        let b = RetryBudget::new(T0);
        assert!(!b.try_retry(0.0, 0, 1, T0));
    }
}
