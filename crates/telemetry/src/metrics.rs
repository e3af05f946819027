//! The metric families, and their rendering in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Why one connect attempt to an instance failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    Resolve,
    Unreachable,
    Other,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 5] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Resolve,
        ConnectFailure::Unreachable,
        ConnectFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Resolve => "resolve",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Other => "other",
        }
    }
}

/// The stable error codes: the `P-Error` header, the `code` label of `anyedge_errors_total`,
/// and the `code` field of log lines. A closed set: adding one is a contract change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `[limits] max_connections` reached.
    NodeLimit,
    /// `[limits] max_connections_per_ip` reached.
    IpLimit,
    /// The app's `limits.max_connections` reached.
    AppLimit,
    /// Every instance failed to connect, or the app has none.
    NoInstance,
    /// The node is stopping.
    Draining,
    /// No app serves this host on this port.
    UnknownHost,
    /// The TLS SNI names another app than the Host header.
    Misdirected,
    /// The request is malformed (no host, bad upgrade, unparsable).
    BadRequest,
    /// The request's header block is over `[http] max_header_size`.
    HeadersTooLarge,
    /// The request body is over `[http] max_request_body`.
    BodyTooLarge,
    /// The client took too long to send its request headers.
    ClientTimeout,
    /// The instance refused or reset the connection, or answered something unparsable.
    UpstreamError,
    /// The instance did not start its response within `[http] response_timeout`.
    UpstreamTimeout,
    /// TLS handshake failed (no certificate for the name, timeout, bad ClientHello).
    TlsHandshake,
    /// The app's queue on this node is full (its budget and queue are used up).
    AppOverloaded,
    /// Waited `limits.queue_timeout` in the app's queue without getting a slot.
    QueueTimeout,
    /// The forced region or instance (`P-Force-*`, replay) has nothing that can take it.
    ForcedUnavailable,
    /// A replay chain went over its bound.
    ReplayLimit,
    /// A replay could not be carried out (no target, app not allowed, body not kept).
    ReplayFailed,
    /// The client's address is refused by the app's or service's `access` rules.
    AccessDenied,
    /// Over the app's `rate_limit` (the client's rate, or the app's total on this node).
    RateLimited,
    /// The instance started for the request failed to start, or was not ready within the
    /// app's `start_timeout`.
    InstanceStartFailed,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::NodeLimit,
        ErrorCode::IpLimit,
        ErrorCode::AppLimit,
        ErrorCode::NoInstance,
        ErrorCode::Draining,
        ErrorCode::UnknownHost,
        ErrorCode::Misdirected,
        ErrorCode::BadRequest,
        ErrorCode::HeadersTooLarge,
        ErrorCode::BodyTooLarge,
        ErrorCode::ClientTimeout,
        ErrorCode::UpstreamError,
        ErrorCode::UpstreamTimeout,
        ErrorCode::TlsHandshake,
        ErrorCode::AppOverloaded,
        ErrorCode::QueueTimeout,
        ErrorCode::ForcedUnavailable,
        ErrorCode::ReplayLimit,
        ErrorCode::ReplayFailed,
        ErrorCode::AccessDenied,
        ErrorCode::RateLimited,
        ErrorCode::InstanceStartFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NodeLimit => "node_connection_limit",
            ErrorCode::IpLimit => "client_ip_connection_limit",
            ErrorCode::AppLimit => "app_connection_limit",
            ErrorCode::NoInstance => "no_instance_available",
            ErrorCode::Draining => "draining",
            ErrorCode::UnknownHost => "unknown_host",
            ErrorCode::Misdirected => "misdirected_request",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::ClientTimeout => "client_timeout",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::TlsHandshake => "tls_handshake_failed",
            ErrorCode::AppOverloaded => "app_overloaded",
            ErrorCode::QueueTimeout => "queue_timeout",
            ErrorCode::ForcedUnavailable => "forced_target_unavailable",
            ErrorCode::ReplayLimit => "replay_limit_exceeded",
            ErrorCode::ReplayFailed => "replay_failed",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InstanceStartFailed => "instance_start_failed",
        }
    }
}

/// Why a request or connection was sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The chosen instance could not be connected to; another was tried.
    Connect,
    /// A pooled HTTP/1.1 connection failed before any response byte (idempotent request).
    StaleConnection,
    /// The instance refused the HTTP/2 stream (REFUSED_STREAM) before processing it.
    RefusedStream,
    /// The instance's HTTP/2 GOAWAY came before it processed the stream.
    GoAway,
    /// The worker running the instance answered "retry elsewhere" (over backhaul) before the
    /// instance saw the request.
    WorkerRefused,
    /// An idempotent request got no response head within `response_timeout`
    /// (`[http] retry_on`).
    Timeout,
    /// An idempotent request's connection (or its worker's backhaul) failed after it was
    /// written, before any response byte (`[http] retry_on`).
    Reset,
}

impl RetryReason {
    pub const ALL: [RetryReason; 7] = [
        RetryReason::Connect,
        RetryReason::StaleConnection,
        RetryReason::RefusedStream,
        RetryReason::GoAway,
        RetryReason::WorkerRefused,
        RetryReason::Timeout,
        RetryReason::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::StaleConnection => "stale_connection",
            RetryReason::RefusedStream => "refused_stream",
            RetryReason::GoAway => "goaway",
            RetryReason::WorkerRefused => "worker_refused",
            RetryReason::Timeout => "timeout",
            RetryReason::Reset => "reset",
        }
    }
}

/// Why an instance was ejected as an outlier: the kind of its last failure in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierReason {
    /// No response head within `[http] response_timeout`.
    Timeout,
    /// The connection failed after the request was written.
    Reset,
    /// The instance answered one of the app's `outlier.gateway_errors`.
    GatewayError,
    /// The node's own probe of an ejected instance failed (it stays out, for twice as long).
    Probe,
}

impl OutlierReason {
    pub const ALL: [OutlierReason; 4] = [
        OutlierReason::Timeout,
        OutlierReason::Reset,
        OutlierReason::GatewayError,
        OutlierReason::Probe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutlierReason::Timeout => "timeout",
            OutlierReason::Reset => "reset",
            OutlierReason::GatewayError => "gateway_error",
            OutlierReason::Probe => "probe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the instance.
    In,
    /// From the instance to the client.
    Out,
}

/// Counters of one app on this node.
#[derive(Default)]
pub struct AppMetrics {
    tcp_connects: AtomicU64,
    tcp_active: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connect_failures: [AtomicU64; ConnectFailure::ALL.len()],
    errors: [AtomicU64; ErrorCode::ALL.len()],
    retries: [AtomicU64; RetryReason::ALL.len()],
    outlier_ejections: [AtomicU64; OutlierReason::ALL.len()],
    replays: AtomicU64,
    queued: AtomicU64,
    /// Active health check runs: failed, passed.
    health_checks: [AtomicU64; 2],
    http: HttpMetrics,
    /// Access rules, rate limits, the retry budget (`policy.rs`).
    pub policy: crate::policy::PolicyMetrics,
    /// Starts and stops of instances on demand; allocated at the first.
    on_demand: OnceLock<Box<crate::OnDemandMetrics>>,
}

impl AppMetrics {
    /// A client connection was accepted for this app; returns a guard that keeps it active.
    pub fn tcp_connect(self: &Arc<Self>) -> ActiveGuard {
        self.tcp_connects.fetch_add(1, Ordering::Relaxed);
        self.tcp_active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { app: self.clone() }
    }

    fn bytes_counter(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::In => &self.bytes_in,
            Direction::Out => &self.bytes_out,
        }
    }

    pub fn add_bytes(&self, direction: Direction, n: u64) {
        self.bytes_counter(direction)
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes(&self, direction: Direction) -> u64 {
        self.bytes_counter(direction).load(Ordering::Relaxed)
    }

    pub fn connect_failure(&self, why: ConnectFailure) {
        self.connect_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retry(&self, why: RetryReason) {
        self.retries[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retries(&self, why: RetryReason) -> u64 {
        self.retries[why as usize].load(Ordering::Relaxed)
    }

    /// One of the app's instances was ejected as an outlier.
    pub fn outlier_ejection(&self, why: OutlierReason) {
        self.outlier_ejections[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn outlier_ejections(&self, why: OutlierReason) -> u64 {
        self.outlier_ejections[why as usize].load(Ordering::Relaxed)
    }

    pub fn replay(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// The app's on-demand counters (allocated at the first call).
    pub fn on_demand(&self) -> &crate::OnDemandMetrics {
        self.on_demand.get_or_init(Box::default)
    }

    pub(crate) fn on_demand_if_any(&self) -> Option<&crate::OnDemandMetrics> {
        self.on_demand.get().map(|b| &**b)
    }

    /// A request or connection had to wait in the app's queue.
    pub fn queued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, why: ErrorCode) {
        self.errors[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One active health check ran against one of the app's instances.
    pub fn health_check(&self, passed: bool) {
        self.health_checks[usize::from(passed)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn health_checks(&self, passed: bool) -> u64 {
        self.health_checks[usize::from(passed)].load(Ordering::Relaxed)
    }

    /// A response went to the client: its status and how long the request took.
    pub fn http_response(&self, status: u16, seconds: f64) {
        self.http.observe(status, seconds);
    }

    pub fn http_responses(&self, status: u16) -> u64 {
        self.http.responses(status)
    }

    /// Responses sent, all statuses.
    pub fn http_total(&self) -> u64 {
        self.http.count.load(Ordering::Relaxed)
    }

    /// Responses by status, only those sent at least once (a reader's view: the dashboard).
    pub fn http_statuses(&self) -> Vec<(u16, u64)> {
        let Some(by_status) = self.http.by_status.get() else {
            return Vec::new();
        };
        (100u16..)
            .zip(by_status.iter())
            .map(|(s, c)| (s, c.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// The response-time histogram: the count in each of [`LATENCY_BUCKETS`] (not
    /// cumulative), then the count of responses slower than the last bound.
    pub fn http_latency(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        let mut out = [0; LATENCY_BUCKETS.len() + 1];
        let mut seen = 0;
        for (o, c) in out.iter_mut().zip(&self.http.buckets) {
            *o = c.load(Ordering::Relaxed);
            seen += *o;
        }
        out[LATENCY_BUCKETS.len()] = self.http.count.load(Ordering::Relaxed).saturating_sub(seen);
        out
    }

    /// Errors by code, only those that happened.
    pub fn error_counts(&self) -> Vec<(&'static str, u64)> {
        ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), self.errors(*c)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// HTTP requests answered and TCP connections accepted for the app so far: what the
    /// retry budget's ratio is of.
    pub fn requests(&self) -> u64 {
        self.http.count.load(Ordering::Relaxed) + self.tcp_connects.load(Ordering::Relaxed)
    }

    pub fn tcp_connects(&self) -> u64 {
        self.tcp_connects.load(Ordering::Relaxed)
    }

    pub fn tcp_active(&self) -> i64 {
        self.tcp_active.load(Ordering::Relaxed)
    }

    pub fn connect_failures(&self, why: ConnectFailure) -> u64 {
        self.connect_failures[why as usize].load(Ordering::Relaxed)
    }

    pub fn errors(&self, why: ErrorCode) -> u64 {
        self.errors[why as usize].load(Ordering::Relaxed)
    }
}

/// Keeps one connection counted in `anyedge_edge_tcp_active_connections`.
pub struct ActiveGuard {
    app: Arc<AppMetrics>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.app.tcp_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Node-wide counters.
#[derive(Default)]
pub struct NodeMetrics {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub config_generation: AtomicU64,
    /// Apps whose snapshot entry was built afresh, and apps' HTTP services whose routes were
    /// (at start and by reloads): an app a reload did not change is reused, so these grow by
    /// what changed, not by the catalog (issue 21).
    pub apps_built: AtomicU64,
    pub http_services_built: AtomicU64,
    /// 1 for a process started afresh, one more than its predecessor's for one that took the
    /// listening sockets over (`anyedge run --upgrade`).
    pub process_generation: AtomicU64,
    pub accept_errors: AtomicU64,
    pub listener_errors: AtomicU64,
    pub rejected_node_limit: AtomicU64,
    pub open_connections: AtomicI64,
    pub listeners: AtomicI64,
    /// `sk_lookup` steering (`docs/steering.md`): (address, port)s in the kernel's map now,
    /// map entries written (added or removed), and map or listener operations that failed.
    pub steered_ports: AtomicI64,
    pub steering_map_updates: AtomicU64,
    pub steering_failures: AtomicU64,
    /// The spill store (`[http] replay_spill_dir`): bytes of request bodies kept on disk now
    /// (the count `replay_spill_limit` caps), files open now, and bodies that could not be
    /// kept (the cap, or an I/O error).
    pub spill_bytes: AtomicU64,
    pub spill_files: AtomicI64,
    pub spill_refused: AtomicU64,
    /// ACME orders finished, by result (`anyedge_acme_orders_total`).
    pub acme_orders_ok: AtomicU64,
    pub acme_orders_error: AtomicU64,
    /// Requests refused before any app was known (hyper's own 400/431/408).
    rejections: [AtomicU64; ErrorCode::ALL.len()],
}

impl NodeMetrics {
    pub fn rejection(&self, code: ErrorCode) {
        self.rejections[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejections(&self, code: ErrorCode) -> u64 {
        self.rejections[code as usize].load(Ordering::Relaxed)
    }
}

/// The ACME task's view of one hostname (for the dashboard): `pending` (no certificate yet,
/// an order due or running), `valid`, or `failing` (the last order failed; a certificate
/// may still serve until it expires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeHostState {
    pub state: &'static str,
    pub error: Option<String>,
    pub failures: u32,
    /// When the next order is due after a failure (unix seconds).
    pub next_attempt: Option<i64>,
}

/// Every metric of one node.
#[derive(Default)]
pub struct Metrics {
    pub node: NodeMetrics,
    pub backhaul: crate::backhaul::BackhaulMetrics,
    apps: Mutex<BTreeMap<String, Arc<AppMetrics>>>,
    /// notAfter (unix seconds) of the certificate served for each hostname.
    cert_expiries: Mutex<Vec<(String, i64)>>,
    /// The same for certificates issued by ACME (a static certificate's entry wins).
    issued_cert_expiries: Mutex<BTreeMap<String, i64>>,
    /// The ACME task's state of each hostname it holds a certificate for.
    acme_hosts: Mutex<BTreeMap<String, AcmeHostState>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The handle for `app`, created on first use. Series persist after an app is removed,
    /// so counters never go backwards within a process.
    pub fn app(&self, app: &str) -> Arc<AppMetrics> {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.entry(app.to_string()).or_default().clone()
    }

    /// Replace the certificate expiry gauges (on every snapshot, and when a certificate is issued).
    pub fn set_cert_expiries(&self, expiries: Vec<(String, i64)>) {
        *self
            .cert_expiries
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = expiries;
    }

    /// Replace the expiries of ACME-issued certificates (after each issuance or removal).
    pub fn set_issued_cert_expiries(&self, expiries: BTreeMap<String, i64>) {
        *self
            .issued_cert_expiries
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = expiries;
    }

    /// Record the ACME task's state of `hostname`.
    pub fn set_acme_host(&self, hostname: &str, state: AcmeHostState) {
        self.acme_hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hostname.to_string(), state);
    }

    /// The ACME task no longer holds `hostname`.
    pub fn remove_acme_host(&self, hostname: &str) {
        self.acme_hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hostname);
    }

    /// The ACME task's state of each hostname.
    pub fn acme_hosts(&self) -> BTreeMap<String, AcmeHostState> {
        self.acme_hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Static and issued certificate expiries by hostname; a static one wins.
    fn all_cert_expiries(&self) -> BTreeMap<String, i64> {
        let mut all = self
            .issued_cert_expiries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let statics = self
            .cert_expiries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (host, at) in statics.iter() {
            all.insert(host.clone(), *at);
        }
        all
    }

    /// Everything, for the operator.
    pub fn render(&self) -> String {
        let apps = self.snapshot_apps(None);
        let mut out = String::with_capacity(4096);
        self.render_node(&mut out);
        self.backhaul.render(&mut out);
        CERT_EXPIRY.by(&mut out, "hostname", &self.all_cert_expiries());
        render_apps(&mut out, &apps);
        out
    }

    /// One app's series only, for that app's owners.
    pub fn render_app(&self, app: &str) -> String {
        let apps = self.snapshot_apps(Some(app));
        let mut out = String::with_capacity(1024);
        render_apps(&mut out, &apps);
        out
    }

    /// The handle for `app` if it was ever created: a reader (the dashboard) never creates one.
    pub fn existing_app(&self, app: &str) -> Option<Arc<AppMetrics>> {
        let apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.get(app).cloned()
    }

    /// Static and issued certificate expiries (unix seconds) by hostname, and whether each
    /// was issued by ACME.
    pub fn cert_expiries(&self) -> Vec<(String, i64, bool)> {
        let issued = self
            .issued_cert_expiries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let statics: BTreeMap<String, i64> = self
            .cert_expiries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let mut all: BTreeMap<String, (i64, bool)> =
            issued.into_iter().map(|(h, at)| (h, (at, true))).collect();
        for (h, at) in statics {
            all.insert(h, (at, false));
        }
        all.into_iter()
            .map(|(h, (at, acme))| (h, at, acme))
            .collect()
    }

    fn snapshot_apps(&self, only: Option<&str>) -> Vec<(String, Arc<AppMetrics>)> {
        let apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect()
    }

    /// The node-wide families (config, ACME orders, listeners and connections).
    fn render_node(&self, out: &mut String) {
        let n = &self.node;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let results = |ok, error| [("ok", ok), ("error", error)];
        let reloads = results(get(&n.reloads_ok), get(&n.reloads_failed));
        CONFIG_RELOADS.by(out, "result", reloads);
        let orders = results(get(&n.acme_orders_ok), get(&n.acme_orders_error));
        ACME_ORDERS.by(out, "result", orders);
        CONFIG_GENERATION.one(out, get(&n.config_generation));
        APPS_BUILT.one(out, get(&n.apps_built));
        HTTP_SERVICES_BUILT.one(out, get(&n.http_services_built));
        PROCESS_GENERATION.one(out, get(&n.process_generation));
        ACCEPT_ERRORS.one(out, get(&n.accept_errors));
        LISTENER_ERRORS.one(out, get(&n.listener_errors));
        NODE_REJECTED.one(out, get(&n.rejected_node_limit));
        OPEN_CONNECTIONS.one(out, n.open_connections.load(Ordering::Relaxed));
        let rejections = ErrorCode::ALL.map(|code| (code.as_str(), n.rejections(code)));
        NODE_ERRORS.by(out, "code", rejections);
        LISTENERS.one(out, n.listeners.load(Ordering::Relaxed));
        STEERED_PORTS.one(out, n.steered_ports.load(Ordering::Relaxed));
        STEERING_MAP_UPDATES.one(out, get(&n.steering_map_updates));
        STEERING_FAILURES.one(out, get(&n.steering_failures));
        SPILL_BYTES.one(out, get(&n.spill_bytes));
        SPILL_FILES.one(out, n.spill_files.load(Ordering::Relaxed));
        SPILL_REFUSED.one(out, get(&n.spill_refused));
        ACCESS_LOG_DROPPED.one(out, crate::access::dropped());
    }
}

/// Upper bounds of the response-time histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 12] = BUCKETS;
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Per-app HTTP responses by status, and the response-time histogram.
struct HttpMetrics {
    /// Index: status - 100, for 100..=599; allocated at the app's first response, so an app
    /// that never answered costs 8 bytes here rather than 4 KiB (issue 21: memory at rest).
    by_status: OnceLock<Box<[AtomicU64]>>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum of seconds, in microseconds.
    sum_micros: AtomicU64,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            by_status: OnceLock::new(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl HttpMetrics {
    fn observe(&self, status: u16, seconds: f64) {
        let by_status = self
            .by_status
            .get_or_init(|| (100..600).map(|_| AtomicU64::new(0)).collect());
        if let Some(c) = status
            .checked_sub(100)
            .and_then(|i| by_status.get(usize::from(i)))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn responses(&self, status: u16) -> u64 {
        status
            .checked_sub(100)
            .and_then(|i| self.by_status.get()?.get(usize::from(i)))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn render(&self, app: &str, responses: &mut String, histogram: &mut String) {
        for (i, c) in self.by_status.get().into_iter().flatten().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    responses,
                    "anyedge_edge_http_responses_total{{app=\"{app}\",status=\"{}\"}} {n}",
                    i + 100
                );
            }
        }
        let mut cumulative = 0;
        for (le, c) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(histogram, "anyedge_edge_http_response_time_seconds_bucket{{app=\"{app}\",le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            histogram,
            "anyedge_edge_http_response_time_seconds_bucket{{app=\"{app}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            histogram,
            "anyedge_edge_http_response_time_seconds_sum{{app=\"{app}\"}} {sum}"
        );
        let _ = writeln!(
            histogram,
            "anyedge_edge_http_response_time_seconds_count{{app=\"{app}\"}} {count}"
        );
    }
}

pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric family: its name, type and help text, and how its samples are written.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

impl Family {
    const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: "counter",
            help,
        }
    }

    const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: "gauge",
            help,
        }
    }

    /// The `# HELP` and `# TYPE` lines.
    fn head(&self, out: &mut String) {
        family(out, self.name, self.kind, self.help);
    }

    /// The family with its one sample, without labels.
    fn one(&self, out: &mut String, value: impl Display) {
        self.head(out);
        let _ = writeln!(out, "{} {value}", self.name);
    }

    /// The family with one sample per value of `label`.
    fn by<L: Display, V: Display>(
        &self,
        out: &mut String,
        label: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        self.head(out);
        for (value, n) in samples {
            let _ = writeln!(out, "{}{{{label}=\"{value}\"}} {n}", self.name);
        }
    }

    /// The family with one sample per app.
    fn per_app<V: Display>(
        &self,
        out: &mut String,
        apps: &[(String, Arc<AppMetrics>)],
        value: impl Fn(&AppMetrics) -> V,
    ) {
        self.head(out);
        for (app, m) in apps {
            let _ = writeln!(out, "{}{{app=\"{app}\"}} {}", self.name, value(m));
        }
    }

    /// The family with, for each app, one sample per value of `label`.
    fn per_app_by<S: IntoIterator<Item = (&'static str, u64)>>(
        &self,
        out: &mut String,
        apps: &[(String, Arc<AppMetrics>)],
        label: &str,
        samples: impl Fn(&AppMetrics) -> S,
    ) {
        self.head(out);
        for (app, m) in apps {
            for (value, n) in samples(m) {
                let _ = writeln!(
                    out,
                    "{}{{app=\"{app}\",{label}=\"{value}\"}} {n}",
                    self.name
                );
            }
        }
    }
}

// The families, in the order they are rendered.

const CONFIG_RELOADS: Family =
    Family::counter("anyedge_config_reloads_total", "Config reloads by result.");
const ACME_ORDERS: Family = Family::counter(
    "anyedge_acme_orders_total",
    "ACME certificate orders finished, by result.",
);
const CONFIG_GENERATION: Family = Family::gauge(
    "anyedge_config_generation",
    "Generation of the catalog snapshot in force.",
);
const APPS_BUILT: Family = Family::counter(
    "anyedge_catalog_apps_built_total",
    "Apps whose catalog entry was built afresh, at start and by reloads (an unchanged app is reused).",
);
const HTTP_SERVICES_BUILT: Family = Family::counter(
    "anyedge_routes_http_services_built_total",
    "Apps' HTTP services whose routes were built afresh, at start and by reloads (an unchanged app's are reused).",
);
const PROCESS_GENERATION: Family = Family::gauge(
    "anyedge_process_generation",
    "Processes this node has been since it last started afresh: 1, and one more at each upgrade that took the listening sockets over.",
);
const SPILL_BYTES: Family = Family::gauge(
    "anyedge_replay_spill_bytes",
    "Bytes of request bodies kept in the spill store now, for a replay or retry ([http] replay_spill_limit caps them).",
);
const SPILL_FILES: Family = Family::gauge(
    "anyedge_replay_spill_files",
    "Spill files open now (one per request whose body went past replay_body_limit).",
);
const SPILL_REFUSED: Family = Family::counter(
    "anyedge_replay_spill_refused_total",
    "Request bodies past replay_body_limit the spill store could not keep (node cap reached, or a disk error): they stream and cannot be replayed.",
);
const ACCESS_LOG_DROPPED: Family = Family::counter(
    "anyedge_access_log_dropped_total",
    "Access-log lines dropped because stderr could not take them as fast as they came.",
);
const ACCEPT_ERRORS: Family = Family::counter(
    "anyedge_accept_errors_total",
    "accept() failures (EMFILE and the like).",
);
const LISTENER_ERRORS: Family = Family::counter(
    "anyedge_listener_errors_total",
    "Listeners that could not be opened.",
);
const NODE_REJECTED: Family = Family::counter(
    "anyedge_node_rejected_connections_total",
    "Connections refused by the node-wide connection cap.",
);
const OPEN_CONNECTIONS: Family = Family::gauge(
    "anyedge_open_connections",
    "Client connections open on this node.",
);
const NODE_ERRORS: Family = Family::counter(
    "anyedge_node_errors_total",
    "Requests refused before an app was known, by error code.",
);
const LISTENERS: Family = Family::gauge("anyedge_listeners", "Listening sockets open.");
const STEERED_PORTS: Family = Family::gauge(
    "anyedge_steered_ports",
    "(address, port)s steered to the node's listeners by sk_lookup (0 with steering = sockets).",
);
const STEERING_MAP_UPDATES: Family = Family::counter(
    "anyedge_steering_map_updates_total",
    "Entries added to or removed from the sk_lookup ports map.",
);
const STEERING_FAILURES: Family = Family::counter(
    "anyedge_steering_failures_total",
    "sk_lookup map or listener operations that failed (retried on the next reload).",
);
// (The backhaul families come here: `backhaul.rs`.)
const CERT_EXPIRY: Family = Family::gauge(
    "anyedge_cert_expiry_timestamp_seconds",
    "When the certificate served for a hostname expires.",
);
const HTTP_RESPONSES: Family = Family::counter(
    "anyedge_edge_http_responses_total",
    "HTTP responses sent to clients, by status.",
);
const HTTP_RESPONSE_TIME: Family = Family {
    name: "anyedge_edge_http_response_time_seconds",
    kind: "histogram",
    help: "Time from request headers to response headers.",
};
const TCP_CONNECTS: Family = Family::counter(
    "anyedge_edge_tcp_connects_total",
    "Client TCP connections accepted for the app.",
);
const TCP_ACTIVE: Family = Family::gauge(
    "anyedge_edge_tcp_active_connections",
    "Client TCP connections open for the app.",
);
const DATA_BYTES: Family = Family::counter(
    "anyedge_edge_data_bytes_total",
    "Bytes proxied; in = client to instance.",
);
const CONNECT_FAILURES: Family = Family::counter(
    "anyedge_edge_tcp_connect_failures_total",
    "Failed connect attempts to instances, by reason.",
);
const RETRIES: Family = Family::counter(
    "anyedge_retries_total",
    "Requests or connections sent to an instance again, by reason.",
);
const OUTLIER_EJECTIONS: Family = Family::counter(
    "anyedge_outlier_ejections_total",
    "Instances ejected from placement after failing requests in a row, by the last failure's kind.",
);
const HEALTH_CHECKS: Family = Family::counter(
    "anyedge_health_checks_total",
    "Active health checks run against the app's instances, by result.",
);
const REPLAYS: Family = Family::counter(
    "anyedge_replays_total",
    "Requests replayed at an instance's request (replay response header).",
);
const QUEUED: Family = Family::counter(
    "anyedge_queued_total",
    "Requests or connections that waited in the app's queue for a slot.",
);
const ERRORS: Family = Family::counter(
    "anyedge_errors_total",
    "Client connections or requests that failed, by error code.",
);

/// The per-app families, each with a series (or a set of them) for every app in `apps`.
fn render_apps(out: &mut String, apps: &[(String, Arc<AppMetrics>)]) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    render_http(out, apps);
    TCP_CONNECTS.per_app(out, apps, |m| get(&m.tcp_connects));
    TCP_ACTIVE.per_app(out, apps, AppMetrics::tcp_active);
    DATA_BYTES.per_app_by(out, apps, "direction", |m| {
        [("in", get(&m.bytes_in)), ("out", get(&m.bytes_out))]
    });
    CONNECT_FAILURES.per_app_by(out, apps, "reason", |m| {
        ConnectFailure::ALL.map(|why| (why.as_str(), m.connect_failures(why)))
    });
    RETRIES.per_app_by(out, apps, "reason", |m| {
        RetryReason::ALL.map(|why| (why.as_str(), m.retries(why)))
    });
    OUTLIER_EJECTIONS.per_app_by(out, apps, "reason", |m| {
        OutlierReason::ALL.map(|why| (why.as_str(), m.outlier_ejections(why)))
    });
    HEALTH_CHECKS.per_app_by(out, apps, "result", |m| {
        [
            ("pass", m.health_checks(true)),
            ("fail", m.health_checks(false)),
        ]
    });
    REPLAYS.per_app(out, apps, AppMetrics::replays);
    QUEUED.per_app(out, apps, |m| get(&m.queued));
    crate::on_demand::render(out, apps);
    ERRORS.per_app_by(out, apps, "code", |m| {
        ErrorCode::ALL.map(|why| (why.as_str(), m.errors(why)))
    });
    crate::policy::render(out, apps);
}

/// The HTTP families: responses by status, then the response-time histogram, each family's
/// series for every app together.
fn render_http(out: &mut String, apps: &[(String, Arc<AppMetrics>)]) {
    let (mut responses, mut histogram) = (String::new(), String::new());
    for (app, m) in apps {
        m.http.render(app, &mut responses, &mut histogram);
    }
    HTTP_RESPONSES.head(out);
    out.push_str(&responses);
    HTTP_RESPONSE_TIME.head(out);
    out.push_str(&histogram);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_families_and_app_series() {
        let metrics = Metrics::new();
        let a = metrics.app("alpha");
        let guard = a.tcp_connect();
        a.add_bytes(Direction::In, 10);
        a.connect_failure(ConnectFailure::Refused);
        metrics.app("beta").error(ErrorCode::NoInstance);
        a.health_check(true);
        a.health_check(false);
        a.health_check(false);
        a.outlier_ejection(OutlierReason::GatewayError);
        let text = metrics.render();
        assert!(text
            .contains("anyedge_outlier_ejections_total{app=\"alpha\",reason=\"gateway_error\"} 1"));
        assert!(
            text.contains("anyedge_outlier_ejections_total{app=\"alpha\",reason=\"timeout\"} 0")
        );
        assert!(text.contains("anyedge_outlier_ejections_total{app=\"beta\",reason=\"reset\"} 0"));
        assert!(text.contains("anyedge_health_checks_total{app=\"alpha\",result=\"pass\"} 1"));
        assert!(text.contains("anyedge_health_checks_total{app=\"alpha\",result=\"fail\"} 2"));
        assert!(text.contains("anyedge_health_checks_total{app=\"beta\",result=\"fail\"} 0"));
        assert!(text.contains("anyedge_edge_tcp_connects_total{app=\"alpha\"} 1"));
        assert!(text.contains("anyedge_edge_tcp_active_connections{app=\"alpha\"} 1"));
        assert!(text.contains("anyedge_edge_data_bytes_total{app=\"alpha\",direction=\"in\"} 10"));
        assert!(text.contains(
            "anyedge_edge_tcp_connect_failures_total{app=\"alpha\",reason=\"refused\"} 1"
        ));
        assert!(
            text.contains("anyedge_errors_total{app=\"beta\",code=\"no_instance_available\"} 1")
        );
        drop(guard);
        assert!(metrics
            .render()
            .contains("anyedge_edge_tcp_active_connections{app=\"alpha\"} 0"));
    }

    #[test]
    fn app_view_shows_only_that_app() {
        let metrics = Metrics::new();
        metrics.app("alpha");
        metrics.app("beta");
        let text = metrics.render_app("alpha");
        assert!(text.contains("app=\"alpha\""));
        assert!(!text.contains("app=\"beta\""));
        assert!(!text.contains("anyedge_config_reloads_total"));
    }
}
