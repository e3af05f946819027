//! Telemetry: per-app and node metrics rendered as Prometheus text, and log set-up.
//!
//! Metrics are plain atomics behind `Arc` handles that the data plane resolves once per
//! catalog snapshot, so counting on the hot path is one relaxed add, never a map lookup.
//! Label values come from closed enums or from app names in the catalog, never from requests.

pub mod access;
mod backhaul;
mod logging;
mod metrics;
mod on_demand;
mod policy;

pub use backhaul::BackhaulMetrics;
pub use logging::{init_logging, LogFormat};
pub use metrics::{
    AcmeHostState, AppMetrics, ConnectFailure, Direction, ErrorCode, Metrics, NodeMetrics,
    OutlierReason, RetryReason, LATENCY_BUCKETS,
};
pub use on_demand::{OnDemandMetrics, StartResult};
pub use policy::PolicyMetrics;
