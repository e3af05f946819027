//! Metrics of instances started on demand (`docs/on-demand.md`): starts by result, stops, the
//! start-duration histogram and the requests that waited for a start. Allocated at an app's
//! first start, so apps without drivers pay one pointer each.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::{family, AppMetrics};

/// Upper bounds of the start-duration histogram, seconds.
const BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];

/// How a start ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartResult {
    /// Ready: its check passed, or its port accepted a connection.
    Ok,
    /// The driver failed (non-zero exit, an error answer, unreachable API).
    Failed,
    /// Not ready within `start_timeout`.
    Timeout,
}

impl StartResult {
    pub const ALL: [StartResult; 3] = [StartResult::Ok, StartResult::Failed, StartResult::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            StartResult::Ok => "ok",
            StartResult::Failed => "failed",
            StartResult::Timeout => "timeout",
        }
    }
}

/// One app's on-demand counters.
#[derive(Default)]
pub struct OnDemandMetrics {
    starts: [AtomicU64; StartResult::ALL.len()],
    stops: AtomicU64,
    waited: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl OnDemandMetrics {
    /// A start ended after `seconds` (the histogram counts successful starts only).
    pub fn start(&self, result: StartResult, seconds: f64) {
        self.starts[result as usize].fetch_add(1, Ordering::Relaxed);
        if result != StartResult::Ok {
            return;
        }
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn starts(&self, result: StartResult) -> u64 {
        self.starts[result as usize].load(Ordering::Relaxed)
    }

    /// An instance was stopped (autostop).
    pub fn stop(&self) {
        self.stops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stops(&self) -> u64 {
        self.stops.load(Ordering::Relaxed)
    }

    /// A request or connection waited for a start.
    pub fn waited(&self) {
        self.waited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn waits(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }
}

/// The on-demand families, with a series set for each app that has had a start or a wait.
pub(crate) fn render(out: &mut String, apps: &[(String, Arc<AppMetrics>)]) {
    let with: Vec<(&str, &OnDemandMetrics)> = apps
        .iter()
        .filter_map(|(name, m)| Some((name.as_str(), m.on_demand_if_any()?)))
        .collect();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family(
        out,
        "anyedge_instance_starts_total",
        "counter",
        "Starts of instances on demand, by result.",
    );
    for (app, m) in &with {
        for r in StartResult::ALL {
            let _ = writeln!(
                out,
                "anyedge_instance_starts_total{{app=\"{app}\",result=\"{}\"}} {}",
                r.as_str(),
                m.starts(r)
            );
        }
    }
    family(
        out,
        "anyedge_instance_stops_total",
        "counter",
        "Instances stopped after stop_after of idleness.",
    );
    for (app, m) in &with {
        let _ = writeln!(
            out,
            "anyedge_instance_stops_total{{app=\"{app}\"}} {}",
            m.stops()
        );
    }
    family(
        out,
        "anyedge_instance_start_duration_seconds",
        "histogram",
        "Time from a start's request to its instance being ready (successful starts).",
    );
    for (app, m) in &with {
        let mut cumulative = 0;
        for (le, c) in BUCKETS.iter().zip(&m.buckets) {
            cumulative += get(c);
            let _ = writeln!(out, "anyedge_instance_start_duration_seconds_bucket{{app=\"{app}\",le=\"{le}\"}} {cumulative}");
        }
        let count = get(&m.count);
        let _ = writeln!(
            out,
            "anyedge_instance_start_duration_seconds_bucket{{app=\"{app}\",le=\"+Inf\"}} {count}"
        );
        let sum = get(&m.sum_micros) as f64 / 1e6;
        let _ = writeln!(
            out,
            "anyedge_instance_start_duration_seconds_sum{{app=\"{app}\"}} {sum}\nanyedge_instance_start_duration_seconds_count{{app=\"{app}\"}} {count}"
        );
    }
    family(
        out,
        "anyedge_requests_waited_for_start_total",
        "counter",
        "Requests or connections that waited for an instance to start.",
    );
    for (app, m) in &with {
        let _ = writeln!(
            out,
            "anyedge_requests_waited_for_start_total{{app=\"{app}\"}} {}",
            m.waits()
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::Metrics;

    #[test]
    fn only_apps_with_starts_have_series() {
        let metrics = Metrics::default();
        let a = metrics.app("alpha");
        let _ = metrics.app("beta");
        a.on_demand().start(super::StartResult::Ok, 1.2);
        a.on_demand().start(super::StartResult::Timeout, 20.0);
        a.on_demand().waited();
        a.on_demand().stop();
        let text = metrics.render();
        assert!(text.contains("anyedge_instance_starts_total{app=\"alpha\",result=\"ok\"} 1"));
        assert!(text.contains("anyedge_instance_starts_total{app=\"alpha\",result=\"timeout\"} 1"));
        assert!(text.contains("anyedge_instance_stops_total{app=\"alpha\"} 1"));
        assert!(text.contains("anyedge_requests_waited_for_start_total{app=\"alpha\"} 1"));
        assert!(text.contains(
            "anyedge_instance_start_duration_seconds_bucket{app=\"alpha\",le=\"2.5\"} 1"
        ));
        assert!(text
            .contains("anyedge_instance_start_duration_seconds_bucket{app=\"alpha\",le=\"1\"} 0"));
        assert!(!text.contains("anyedge_instance_starts_total{app=\"beta\""));
    }
}
