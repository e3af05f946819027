//! The validated internal config: what every other crate reads. File formats live elsewhere.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

mod apps;
mod policy;
pub use apps::{Apps, CHUNK};
pub use policy::{Access, Cidr, Denied, RateLimit, RetryBudget};

/// A whole validated config, from either file format.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: Node,
    pub admin: Admin,
    pub catalog: CatalogConfig,
    pub limits: Limits,
    pub http: Http,
    pub regions: BTreeMap<String, Coordinates>,
    /// Shared, not copied: the node's file, the catalog's assembled config and every snapshot
    /// that has an app unchanged hold the same `App` (`docs/architecture.md`, "Snapshots").
    pub apps: Apps,
    /// `[cluster]`: mutual TLS between nodes.
    pub cluster: Option<ClusterTls>,
    pub acme: Acme,
    /// Top-level `[[instances]]` (etcd store): instances this worker runs, in its own region.
    pub local_instances: Vec<LocalInstance>,
    /// Other nodes of the cluster that instances name (`[[nodes]]` in the file, `nodes/` in
    /// etcd), by id: where their backhaul is reached.
    pub peers: BTreeMap<String, Peer>,
    /// Which file format it came from.
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    /// The work-sample JSON (`{"Apps": [...]}`).
    WorkSample,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub region: String,
    pub roles: Roles,
    /// Worker threads; 0 means one per CPU.
    pub threads: usize,
    /// How long a stopping node lets open connections finish.
    pub drain_timeout: Duration,
    pub backhaul_listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    /// The owner-only Unix socket where `anyedge run --upgrade` takes the listening sockets
    /// over; none by default (`docs/operations.md`).
    pub control_socket: Option<std::path::PathBuf>,
    /// How connections reach the node's listeners (`docs/steering.md`).
    pub steering: Steering,
    /// Where `sk_lookup` steering pins its maps and link (under `<dir>/<node id>/`).
    pub bpf_pin_dir: PathBuf,
}

/// How connections for the configured ports reach the node (`[node] steering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Steering {
    /// One listening socket per (address, port) and shard.
    #[default]
    Sockets,
    /// An `sk_lookup` BPF program hands every configured (address, port) to one listening
    /// socket per address family and shard.
    SkLookup,
}

impl Steering {
    pub fn as_str(self) -> &'static str {
        match self {
            Steering::Sockets => "sockets",
            Steering::SkLookup => "sk_lookup",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub edge: bool,
    pub worker: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// SHA-256 of the operator's bearer tokens: when any is set, the full view (`/`,
    /// `/v1/status`, `/metrics`) asks for one of them; `/healthz` and the owners' views do not.
    pub tokens_sha256: Vec<[u8; 32]>,
    /// How often the dashboard's live stream sends a new picture (`docs/dashboard.md`).
    pub update_interval: Duration,
}

impl Admin {
    /// Whether `token` is one of the operator's bearer tokens (constant-time compare).
    pub fn accepts_token(&self, token: &[u8]) -> bool {
        token_matches(&self.tokens_sha256, token)
    }
}

/// Whether the SHA-256 of `token` is in `hashes`, compared in constant time.
fn token_matches(hashes: &[[u8; 32]], token: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let digest: [u8; 32] = Sha256::digest(token).into();
    hashes
        .iter()
        .any(|t| t.iter().zip(&digest).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0)
}

#[derive(Debug, Clone, PartialEq)]
pub enum CatalogConfig {
    File,
    Etcd(EtcdConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
}

/// Node-wide protection.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub tls_handshake_timeout: Duration,
    pub max_concurrent_handshakes: usize,
    /// Bound on resolving and connecting to one instance.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_000,
            max_connections_per_ip: 1_000,
            tls_handshake_timeout: Duration::from_secs(10),
            max_concurrent_handshakes: 1_024,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The file has an `[acme]` section. With the etcd store that turns ACME on (state in
    /// etcd, `[catalog] secret_key_file` required); a single node needs `state_dir`.
    pub enabled: bool,
    pub directory: String,
    pub contact: Vec<String>,
    pub ca_roots: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// First wait after a failed order; doubles on each further failure, up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for Acme {
    fn default() -> Self {
        Acme {
            enabled: false,
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            contact: Vec::new(),
            ca_roots: None,
            state_dir: None,
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
        }
    }
}

/// Another node, as the instances it runs are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub region: String,
    /// `host:port` of its backhaul listener.
    pub advertise: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInstance {
    pub app: String,
    pub instance: Instance,
}

/// `[http]`: the HTTP edge, node-wide.
#[derive(Debug, Clone, PartialEq)]
pub struct Http {
    pub header_prefix: String,
    /// Bound on receiving a request's headers (slowloris), also on a kept-alive connection's
    /// wait for its next request.
    pub header_read_timeout: Duration,
    /// A client connection with nothing in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Bound on waiting for an instance's response headers.
    pub response_timeout: Duration,
    /// Pooled instance connections unused this long are closed: keep it below the instances'
    /// own keep-alive (Node.js closes after 5 s).
    pub upstream_idle_timeout: Duration,
    /// Request bodies larger than this get 413; 0 is no limit.
    pub max_request_body: u64,
    /// Request header block larger than this gets 431.
    pub max_header_size: usize,
    /// Request bodies up to this size are kept for a retry or replay.
    pub replay_body_limit: usize,
    /// Where a request body past `replay_body_limit` is kept for a replay or retry (one
    /// unlinked file per request; `docs/http.md`, "Replay of large bodies"). Read at start.
    pub replay_spill_dir: PathBuf,
    /// Node-wide cap on the bytes kept under `replay_spill_dir`; 0: bodies past
    /// `replay_body_limit` are not kept at all.
    pub replay_spill_limit: u64,
    /// HTTP/2 streams a client may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// One log line per request.
    pub access_log: bool,
    /// Instances one request may be sent to (the first try included).
    pub max_attempts: u32,
    /// No new attempt (retry or replay) starts this long after the request arrived.
    pub retry_deadline: Duration,
    /// Failures after an idempotent request was sent that send it to another instance.
    pub retry_on: RetryOn,
}

/// `[http] retry_on`: the failures of an idempotent request (RFC 9110 9.2.2), after it was
/// written to its instance and before any response byte, that send it to another instance
/// within `max_attempts` and `retry_deadline` (nginx's `proxy_next_upstream error timeout`,
/// Envoy's `retry_on: reset` and per-try timeout). Failures that prove the instance did not
/// process a request are retried whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// `"timeout"`: no response head within `response_timeout`.
    pub timeout: bool,
    /// `"reset"`: the connection (or a worker's backhaul) failed, or was closed or reset.
    pub reset: bool,
}

impl RetryOn {
    /// The values `retry_on` accepts.
    pub const VALUES: [&'static str; 2] = ["timeout", "reset"];
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn {
            timeout: true,
            reset: true,
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            header_prefix: "anyedge".into(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(4),
            max_request_body: 0,
            max_header_size: 64 * 1024,
            replay_body_limit: 1024 * 1024,
            replay_spill_dir: PathBuf::from("/var/tmp/anyedge-spill"),
            replay_spill_limit: 1 << 30,
            h2_max_concurrent_streams: 250,
            access_log: true,
            max_attempts: 5,
            retry_deadline: Duration::from_secs(15),
            retry_on: RetryOn::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coordinates {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub name: String,
    /// Lower-cased; may start with `*.`.
    pub hostnames: Vec<String>,
    pub concurrency: Concurrency,
    pub limits: AppLimits,
    /// Passive ejection of instances that time out, reset or answer gateway errors.
    pub outlier: Outlier,
    /// Who may reach the app (`access`); `None`: everyone. Boxed: most apps have none, and
    /// `App` is held in every snapshot.
    pub access: Option<Box<Access>>,
    /// Requests and new connections per second (`rate_limit`); `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// Retries the app may make on this node (`retry_budget`).
    pub retry_budget: RetryBudget,
    /// Instances started on demand and stopped when idle (`docs/on-demand.md`).
    pub on_demand: OnDemand,
    pub tokens_sha256: Vec<[u8; 32]>,
    pub replay_from: Vec<String>,
    pub services: Vec<Service>,
    pub certificates: Vec<CertificateFiles>,
    pub instances: Vec<Instance>,
}

impl App {
    /// Whether `token` is one of the app owners' bearer tokens (its SHA-256 is listed);
    /// compared in constant time.
    pub fn accepts_token(&self, token: &[u8]) -> bool {
        token_matches(&self.tokens_sha256, token)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyType {
    Connections,
    Requests,
}

/// Per-instance concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    pub kind: ConcurrencyType,
    pub soft_limit: u32,
    pub hard_limit: u32,
}

impl Concurrency {
    /// No per-instance cap: the work sample's targets, which predate concurrency limits.
    pub const UNLIMITED: Concurrency = Concurrency {
        kind: ConcurrencyType::Connections,
        soft_limit: u32::MAX,
        hard_limit: u32::MAX,
    };
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            kind: ConcurrencyType::Connections,
            soft_limit: 20,
            hard_limit: 25,
        }
    }
}

/// Per-app budget on each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppLimits {
    pub max_inflight: u32,
    pub queue: u32,
    pub queue_timeout: Duration,
    pub max_connections: u32,
}

impl AppLimits {
    /// The work sample's apps: only the node-wide caps apply.
    pub const UNLIMITED: AppLimits = AppLimits {
        max_inflight: u32::MAX,
        queue: 0,
        queue_timeout: Duration::ZERO,
        max_connections: u32::MAX,
    };
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            max_inflight: 1024,
            queue: 512,
            queue_timeout: Duration::from_secs(5),
            max_connections: 4096,
        }
    }
}

/// `outlier`: an instance that fails this many requests in a row (no response head within
/// `[http] response_timeout`, the connection failed after the request was written, or one of
/// `gateway_errors` from the instance) leaves placement for `base_ejection`, doubling with each
/// ejection in a row up to `max_ejection` (`docs/health.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row that eject an instance; 0 turns passive outlier ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// The longest ejection; at least `base_ejection`.
    pub max_ejection: Duration,
    /// Statuses an instance answers that count as its failure (5xx only; sorted, no duplicates).
    pub gateway_errors: Vec<u16>,
}

impl Outlier {
    /// Counting is on (`consecutive_failures > 0`).
    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0
    }

    /// `status` from the instance counts as a failure.
    pub fn is_gateway_error(&self, status: u16) -> bool {
        self.gateway_errors.contains(&status)
    }

    /// The length of the `n`-th ejection in a row (1-based): `base_ejection * 2^(n-1)`, at most
    /// `max_ejection`.
    pub fn ejection(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(31);
        self.base_ejection
            .saturating_mul(1u32 << shift)
            .min(self.max_ejection)
    }
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            gateway_errors: vec![502, 503, 504],
        }
    }
}

/// `auto_start`, `auto_stop`, `min_running`, `stop_after`, `start_timeout`: what the node does
/// with instances that have a [`Driver`] (`docs/on-demand.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnDemand {
    /// A request that finds no running instance with room starts a stopped one and waits.
    pub auto_start: bool,
    pub auto_stop: AutoStop,
    /// Running instances an autostop never goes below.
    pub min_running: MinRunning,
    /// Idle time (nothing in flight) before an instance may be stopped.
    pub stop_after: Duration,
    /// A start whose instance is not ready by then fails.
    pub start_timeout: Duration,
}

impl Default for OnDemand {
    fn default() -> Self {
        OnDemand {
            auto_start: true,
            auto_stop: AutoStop::Off,
            min_running: MinRunning::default(),
            stop_after: Duration::from_secs(300),
            start_timeout: Duration::from_secs(20),
        }
    }
}

/// `auto_stop`: `"off"` or `"stop"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoStop {
    Off,
    Stop,
}

impl AutoStop {
    /// The values `auto_stop` accepts.
    pub const VALUES: [&'static str; 2] = ["off", "stop"];
}

/// `min_running = N` (in total) or `min_running = { total = N, per_region = M }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinRunning {
    /// Running instances of the app, all regions together, as this node sees them.
    pub total: u32,
    /// Running instances in each region that has instances of the app.
    pub per_region: u32,
}

/// How an instance is started and stopped, by the node that runs it (`docs/on-demand.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// Shell commands (`sh -c`), with `ANYEDGE_APP`, `ANYEDGE_INSTANCE` and `ANYEDGE_ADDRESS`
    /// in their environment; exit status 0 is success.
    Command { start: String, stop: String },
    /// A machines API: `POST <url>/start`, `POST <url>/stop`; a 2xx answer is success.
    Http { url: String },
    /// Run by the node that registered the instance in the etcd catalog, which says only that
    /// it has a driver (`docs/on-demand.md`, "Over backhaul"); never from a config file. Such
    /// an instance is started by asking that node, never by this one.
    Elsewhere,
}

impl Driver {
    /// Whether this node could run it (a command or a machines API), not [`Driver::Elsewhere`].
    pub fn runnable(&self) -> bool {
        !matches!(self, Driver::Elsewhere)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Driver::Command { .. } => "command",
            Driver::Http { .. } => "http",
            Driver::Elsewhere => "elsewhere",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The port instances listen on. `None` only for the work sample, whose targets carry ports.
    pub internal_port: Option<u16>,
    pub force_https: bool,
    pub http_options: HttpOptions,
    pub tcp_options: TcpOptions,
    /// Who may reach this service's ports, checked after the app's own `access`.
    pub access: Option<Box<Access>>,
    pub ports: Vec<PortSpec>,
    pub checks: Vec<Check>,
}

/// Raw TCP connections of a service (`tcp_options`).
#[derive(Debug, Clone, PartialEq)]
pub struct TcpOptions {
    /// A raw TCP connection that moves no byte either way for this long is closed (both
    /// sides); zero never closes one for idleness.
    pub idle_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        // As Envoy's TCP proxy: an hour (a vanished peer is found sooner by TCP keep-alive).
        TcpOptions {
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpOptions {
    pub h2_backend: bool,
    pub idle_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            h2_backend: false,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub port: u16,
    /// A specific local address; `None` is every address.
    pub bind: Option<IpAddr>,
    pub handlers: Vec<Handler>,
    /// Set when `handlers` contains `proxy_proto`.
    pub proxy_proto: Option<ProxyProtoVersion>,
}

impl PortSpec {
    /// Raw TCP (possibly with a PROXY header): no TLS, no HTTP.
    pub fn is_raw_tcp(&self) -> bool {
        self.handlers.iter().all(|h| *h == Handler::ProxyProto)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    Tls,
    Http,
    ProxyProto,
}

impl Handler {
    pub fn as_str(self) -> &'static str {
        match self {
            Handler::Tls => "tls",
            Handler::Http => "http",
            Handler::ProxyProto => "proxy_proto",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtoVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub grace_period: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub region: String,
    pub address: HostPort,
    /// The node that runs it when that is another node (reached over backhaul; the address is
    /// then where that node connects). `None`: this node connects to the address itself.
    pub node: Option<String>,
    /// How the node that runs it starts and stops it; `None`: always running.
    pub driver: Option<Driver>,
}

impl Instance {
    /// Where this instance serves `service`: its own port if the address names one, else the
    /// service's `internal_port`. Validation guarantees one of the two exists.
    pub fn target(&self, service: &Service) -> Option<(&str, u16)> {
        let port = self.address.port.or(service.internal_port)?;
        Some((self.address.host.as_str(), port))
    }
}

/// `host[:port]`; host is an IP literal or a DNS name, resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: Option<u16>,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bracket = self.host.contains(':');
        match (bracket, self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}
