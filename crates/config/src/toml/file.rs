//! The anyedge TOML file as written: one struct per block, loosely typed where validation wants
//! to give its own message (ports as integers, durations and addresses as strings).
//!
//! Unknown keys are not refused here (`deny_unknown_fields` would stop at the first one): the
//! deserializer in `de.rs` collects every ignored key through `serde_ignored` and reports each.
//! Lists of blocks (`services`, `ports`, `checks`, `certificates`, `instances`) are cut out of
//! their parent and deserialized one element at a time, so a type error hides nothing else.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NodeFile {
    pub id: Option<String>,
    pub region: Option<String>,
    pub roles: Option<Vec<String>>,
    pub threads: Option<u64>,
    pub drain_timeout: Option<String>,
    pub backhaul_listen: Option<String>,
    pub advertise: Option<String>,
    pub control_socket: Option<String>,
    pub steering: Option<String>,
    pub bpf_pin_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AdminFile {
    pub listen: Option<String>,
    #[serde(default)]
    pub tokens_sha256: Vec<String>,
    pub update_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CatalogFile {
    pub store: Option<String>,
    pub etcd_endpoints: Option<Vec<String>>,
    pub etcd_ca: Option<String>,
    pub etcd_cert: Option<String>,
    pub etcd_key: Option<String>,
    pub secret_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LimitsFile {
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub tls_handshake_timeout: Option<String>,
    pub max_concurrent_handshakes: Option<u64>,
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ClusterFile {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AcmeFile {
    pub directory: Option<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub contact: Vec<String>,
    pub ca_roots: Option<String>,
    pub state_dir: Option<String>,
    pub retry_min: Option<String>,
    pub retry_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HttpFile {
    pub header_prefix: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub upstream_idle_timeout: Option<String>,
    pub max_request_body: Option<i64>,
    pub max_header_size: Option<i64>,
    pub replay_body_limit: Option<i64>,
    pub replay_spill_dir: Option<String>,
    pub replay_spill_limit: Option<ByteSize>,
    pub h2_max_concurrent_streams: Option<i64>,
    pub access_log: Option<bool>,
    pub max_attempts: Option<i64>,
    pub retry_deadline: Option<String>,
    pub retry_on: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RegionFile {
    pub lat: f64,
    pub lon: f64,
}

/// `[[apps]]` without its `services`, `certificates` and `instances`.
#[derive(Debug, Deserialize)]
pub(crate) struct AppFile {
    pub name: String,
    #[serde(default)]
    pub hostnames: Vec<String>,
    pub concurrency: Option<ConcurrencyFile>,
    pub limits: Option<AppLimitsFile>,
    pub outlier: Option<OutlierFile>,
    pub access: Option<AccessFile>,
    pub rate_limit: Option<RateLimitFile>,
    pub retry_budget: Option<RetryBudgetFile>,
    pub auto_start: Option<bool>,
    pub auto_stop: Option<String>,
    pub min_running: Option<MinRunningFile>,
    pub stop_after: Option<String>,
    pub start_timeout: Option<String>,
    #[serde(default)]
    pub tokens_sha256: Vec<String>,
    #[serde(default)]
    pub replay_from: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConcurrencyFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub soft_limit: Option<u64>,
    pub hard_limit: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AppLimitsFile {
    pub max_inflight: Option<u64>,
    pub queue: Option<u64>,
    pub queue_timeout: Option<String>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct OutlierFile {
    pub consecutive_failures: Option<u64>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub gateway_errors: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AccessFile {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RateLimitFile {
    pub per_client: Option<u64>,
    pub burst: Option<u64>,
    pub total: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RetryBudgetFile {
    pub ratio: Option<f64>,
    pub min_per_second: Option<u64>,
}

/// `[[apps.services]]` without its `ports` and `checks`.
#[derive(Debug, Deserialize)]
pub(crate) struct ServiceFile {
    pub internal_port: Option<i64>,
    #[serde(default)]
    pub force_https: bool,
    pub http_options: Option<HttpOptionsFile>,
    pub tcp_options: Option<TcpOptionsFile>,
    pub access: Option<AccessFile>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct TcpOptionsFile {
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct HttpOptionsFile {
    pub h2_backend: Option<bool>,
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PortFile {
    pub port: i64,
    #[serde(default)]
    pub handlers: Vec<String>,
    pub proxy_proto: Option<String>,
    pub bind: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CheckFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub grace_period: Option<String>,
    pub unhealthy_threshold: Option<u64>,
    pub healthy_threshold: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CertificateFile {
    pub cert: String,
    pub key: String,
}

/// `[[apps.instances]]`.
#[derive(Debug, Deserialize)]
pub(crate) struct InstanceFile {
    pub id: String,
    pub region: Option<String>,
    pub address: String,
    pub node: Option<String>,
    pub driver: Option<DriverFile>,
}

/// A byte count: `1048576` or `"1GiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ByteSize {
    Count(i64),
    Text(String),
}

/// `min_running = N` or `{ total = N, per_region = M }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum MinRunningFile {
    Total(i64),
    Table {
        total: Option<i64>,
        per_region: Option<i64>,
    },
}

/// `driver = { type = "command", start, stop }` or `{ type = "http", url }`.
#[derive(Debug, Deserialize)]
pub(crate) struct DriverFile {
    #[serde(rename = "type")]
    pub kind: String,
    pub start: Option<String>,
    pub stop: Option<String>,
    pub url: Option<String>,
}

/// `[[nodes]]`: another node of a file-configured cluster.
#[derive(Debug, Deserialize)]
pub(crate) struct PeerFile {
    pub id: String,
    pub region: Option<String>,
    pub advertise: String,
}

/// Top-level `[[instances]]`: an instance this worker runs, of an app kept in etcd.
#[derive(Debug, Deserialize)]
pub(crate) struct LocalInstanceFile {
    pub app: String,
    pub id: String,
    pub address: String,
    pub driver: Option<DriverFile>,
}

/// `contact = "mailto:a@b"` or `contact = ["mailto:a@b", "mailto:c@d"]`.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![s.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}
