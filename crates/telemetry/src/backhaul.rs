//! Backhaul counters: the connections an edge keeps to workers, and what a worker accepted and
//! refused. Refusal reasons are a closed set of static strings (the worker's reply codes).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub struct BackhaulMetrics {
    /// Edge side: backhaul connections to workers open now (HTTP/2 and TCP).
    pub h2_connections: AtomicI64,
    pub tcp_connections: AtomicI64,
    /// Edge side: HTTP/2 backhaul connections opened since start.
    pub connections_opened: AtomicU64,
    /// Worker side: TLS handshakes completed with a cluster certificate.
    pub accepted: AtomicU64,
    /// Worker side: streams and TCP connections served for edges.
    pub streams: AtomicU64,
    /// Worker side: refused, by reason (`tls` for a failed mutual-TLS handshake).
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl BackhaulMetrics {
    pub fn refused(&self, reason: &'static str) {
        let mut map = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        *map.entry(reason).or_default() += 1;
    }

    pub fn refusals(&self, reason: &str) -> u64 {
        let map = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(reason).copied().unwrap_or(0)
    }

    pub(crate) fn render(&self, out: &mut String) {
        let i = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let u = |a: &AtomicU64| a.load(Ordering::Relaxed);
        super::metrics::family(
            out,
            "anyedge_backhaul_connections",
            "gauge",
            "Backhaul connections from this edge to workers open now, by kind.",
        );
        let _ = writeln!(
            out,
            "anyedge_backhaul_connections{{kind=\"h2\"}} {}",
            i(&self.h2_connections)
        );
        let _ = writeln!(
            out,
            "anyedge_backhaul_connections{{kind=\"tcp\"}} {}",
            i(&self.tcp_connections)
        );
        super::metrics::family(
            out,
            "anyedge_backhaul_connections_opened_total",
            "counter",
            "HTTP/2 backhaul connections this edge opened to workers.",
        );
        let _ = writeln!(
            out,
            "anyedge_backhaul_connections_opened_total {}",
            u(&self.connections_opened)
        );
        super::metrics::family(
            out,
            "anyedge_backhaul_accepted_total",
            "counter",
            "Backhaul connections this worker accepted (mutual TLS with a cluster certificate).",
        );
        let _ = writeln!(out, "anyedge_backhaul_accepted_total {}", u(&self.accepted));
        super::metrics::family(
            out,
            "anyedge_backhaul_streams_total",
            "counter",
            "Requests and TCP connections this worker carried for edges.",
        );
        let _ = writeln!(out, "anyedge_backhaul_streams_total {}", u(&self.streams));
        super::metrics::family(
            out,
            "anyedge_backhaul_refused_total",
            "counter",
            "Backhaul connections and streams this worker refused, by reason.",
        );
        let map = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        for (reason, n) in map.iter() {
            let _ = writeln!(
                out,
                "anyedge_backhaul_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
    }
}
