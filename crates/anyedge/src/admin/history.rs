//! The last minute of each app's traffic, for rates and latency percentiles: every
//! [`SAMPLE_EVERY`] the admin task copies each app's counters (those the request path already
//! keeps), and a window is the difference between the newest sample and the oldest one kept.
//! Nothing here is touched per request. Bounded: [`SAMPLES`] samples per app that has
//! counters, and an app the catalog dropped is forgotten at the next sample.

use anyedge_catalog::Snapshot;
use anyedge_telemetry::{Metrics, LATENCY_BUCKETS};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per app: one minute's differences.
const SAMPLES: usize = 13;

const LAT: usize = LATENCY_BUCKETS.len() + 1;

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    responses: u64,
    server_errors: u64,
    errors: u64,
    tcp_connects: u64,
    latency: [u64; LAT],
}

/// Traffic over the window the samples cover.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub seconds: f64,
    pub responses: u64,
    pub server_errors: u64,
    pub errors: u64,
    pub tcp_connects: u64,
    latency: [u64; LAT],
}

impl Window {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.responses as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The `q` quantile of response times, milliseconds, interpolated inside its bucket
    /// (`None` without responses; the last bound for responses slower than it).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        let mut lower = 0.0;
        for (i, n) in self.latency.iter().enumerate() {
            let upper = LATENCY_BUCKETS
                .get(i)
                .copied()
                .unwrap_or(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1]);
            if *n > 0 && (seen + n) as f64 >= rank {
                let within = (rank - seen as f64) / *n as f64;
                return Some((lower + (upper - lower) * within.clamp(0.0, 1.0)) * 1000.0);
            }
            seen += n;
            lower = upper;
        }
        Some(lower * 1000.0)
    }

    pub fn to_json(self) -> Value {
        let round = |v: Option<f64>| v.map(|v| (v * 100.0).round() / 100.0);
        json!({
            "seconds": self.seconds.round(),
            "requests_per_second": (self.rate() * 100.0).round() / 100.0,
            "responses": self.responses,
            "server_errors": self.server_errors,
            "errors": self.errors,
            "tcp_connects": self.tcp_connects,
            "latency_ms": {
                "p50": round(self.quantile_ms(0.5)),
                "p90": round(self.quantile_ms(0.9)),
                "p99": round(self.quantile_ms(0.99)),
            },
        })
    }
}

/// Samples per app.
#[derive(Default)]
pub struct History {
    apps: HashMap<Arc<str>, VecDeque<Sample>>,
}

impl History {
    /// Take a sample of every app of `snapshot` that has counters; forget the others.
    pub fn sample(&mut self, snapshot: &Snapshot, metrics: &Metrics, now: Instant) {
        self.apps.retain(|name, _| snapshot.apps.contains_key(name));
        for name in snapshot.apps.keys() {
            let Some(m) = metrics.existing_app(name) else {
                continue;
            };
            let mut responses = 0;
            let mut server_errors = 0;
            for (status, n) in m.http_statuses() {
                responses += n;
                if status >= 500 {
                    server_errors += n;
                }
            }
            let sample = Sample {
                at: now,
                responses,
                server_errors,
                errors: m.error_counts().iter().map(|(_, n)| n).sum(),
                tcp_connects: m.tcp_connects(),
                latency: m.http_latency(),
            };
            let ring = self.apps.entry(name.clone()).or_default();
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back(sample);
        }
    }

    /// The app's traffic between its oldest and newest samples (up to a minute).
    pub fn window(&self, app: &str) -> Option<Window> {
        let ring = self.apps.get(app)?;
        let (first, last) = (ring.front()?, ring.back()?);
        let mut latency = [0; LAT];
        for (i, l) in latency.iter_mut().enumerate() {
            *l = last.latency[i].saturating_sub(first.latency[i]);
        }
        Some(Window {
            seconds: last.at.duration_since(first.at).as_secs_f64(),
            responses: last.responses.saturating_sub(first.responses),
            server_errors: last.server_errors.saturating_sub(first.server_errors),
            errors: last.errors.saturating_sub(first.errors),
            tcp_connects: last.tcp_connects.saturating_sub(first.tcp_connects),
            latency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(latency: [u64; LAT]) -> Window {
        Window {
            seconds: 10.0,
            responses: latency.iter().sum(),
            server_errors: 0,
            errors: 0,
            tcp_connects: 0,
            latency,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut l = [0; LAT];
        l[0] = 50; // <= 1 ms
        l[3] = 50; // 5..10 ms
        let w = window(l);
        assert_eq!(w.rate(), 10.0);
        assert!((w.quantile_ms(0.5).expect("p50") - 1.0).abs() < 1e-9);
        assert!((w.quantile_ms(0.9).expect("p90") - 9.0).abs() < 1e-9);
        assert_eq!(window([0; LAT]).quantile_ms(0.5), None);
        let mut slow = [0; LAT];
        slow[LAT - 1] = 3;
        assert_eq!(window(slow).quantile_ms(0.99), Some(10_000.0));
    }
}
