//! The node-wide sections of an anyedge TOML file: `[node]`, `[admin]`, `[catalog]`, `[limits]`,
//! `[cluster]`, `[acme]`, `[http]`, `[regions.NAME]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml_edit::{Item, Table};

use super::file::{
    AcmeFile, AdminFile, ByteSize, CatalogFile, ClusterFile, HttpFile, LimitsFile, NodeFile,
    RegionFile,
};
use crate::de;
use crate::defaults;
use crate::model::{
    Acme, Admin, CatalogConfig, ClusterTls, Coordinates, EtcdConfig, Http, Limits, Node, Roles,
};
use crate::path;
use crate::report::Report;
use crate::validate::values;

/// The section `key` as its file struct; `None` when absent or when it has a type error
/// (already reported).
fn section<T: DeserializeOwned>(root: &Table, key: &str, r: &mut Report<'_>) -> Option<T> {
    root.get(key).and_then(|item| de::toml_item(item, key, r))
}

/// A duration at `at`, `default` when absent; with `positive`, zero is refused.
pub(super) fn duration(
    v: Option<&str>,
    at: &str,
    default: Duration,
    positive: bool,
    r: &mut Report<'_>,
) -> Duration {
    let Some(s) = v else { return default };
    match r.check(at, values::duration(s)) {
        Some(d) if positive && d.is_zero() => {
            r.error(at, "must be greater than zero");
            default
        }
        Some(d) => d,
        None => default,
    }
}

/// A file path at `at`, resolved against the config file's directory.
pub(super) fn file_path(
    v: Option<&str>,
    at: &str,
    base: Option<&Path>,
    r: &mut Report<'_>,
) -> Option<PathBuf> {
    v.and_then(|s| r.check(at, values::file_path(s, base)))
}

pub(super) fn node(root: &Table, base: Option<&Path>, r: &mut Report<'_>) -> Node {
    let f: NodeFile = section(root, "node", r).unwrap_or_default();
    let mut node = defaults::node();
    if let Some(id) = f.id {
        r.check("node.id", values::name("node id", &id));
        node.id = id;
    }
    if let Some(region) = f.region {
        r.check("node.region", values::name("region name", &region));
        node.region = region;
    }
    if let Some(roles) = f.roles {
        node.roles = self::roles(&roles, r);
    }
    if let Some(t) = f.threads {
        node.threads = r
            .check("node.threads", values::count_usize(t, 0))
            .unwrap_or(0);
    }
    node.drain_timeout = duration(
        f.drain_timeout.as_deref(),
        "node.drain_timeout",
        defaults::DRAIN_TIMEOUT,
        false,
        r,
    );
    node.backhaul_listen = f
        .backhaul_listen
        .and_then(|s| r.check("node.backhaul_listen", values::socket_addr(&s)));
    if let Some(a) = f.advertise {
        r.check("node.advertise", values::host_port(&a, true));
        node.advertise = Some(a);
    }
    node.control_socket = file_path(f.control_socket.as_deref(), "node.control_socket", base, r)
        .and_then(|p| r.check("node.control_socket", values::unix_socket_path(p)));
    if let Some(s) = f.steering {
        node.steering = r
            .check("node.steering", values::steering(&s))
            .unwrap_or_default();
    }
    if let Some(dir) = f.bpf_pin_dir {
        if let Some(dir) = r.check("node.bpf_pin_dir", values::bpf_pin_dir(&dir)) {
            node.bpf_pin_dir = dir;
        }
    }
    // A backhaul listener on one address is what other nodes dial, unless told otherwise.
    if node.advertise.is_none() {
        node.advertise = node
            .backhaul_listen
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| a.to_string());
    }
    node
}

fn roles(list: &[String], r: &mut Report<'_>) -> Roles {
    let mut roles = Roles {
        edge: false,
        worker: false,
    };
    if list.is_empty() {
        r.error(
            "node.roles",
            "roles is empty: name \"edge\", \"worker\" or both",
        );
    }
    for (i, role) in list.iter().enumerate() {
        match role.as_str() {
            "edge" => roles.edge = true,
            "worker" => roles.worker = true,
            other => r.error(
                &path::index("node.roles", i),
                format!("unknown role `{other}` (known: \"edge\", \"worker\")"),
            ),
        }
    }
    roles
}

/// The dashboard's stream never sends more often than this.
const MIN_UPDATE_INTERVAL: Duration = Duration::from_millis(1);

pub(super) fn admin(root: &Table, r: &mut Report<'_>) -> Admin {
    let f: AdminFile = section(root, "admin", r).unwrap_or_default();
    let mut admin = defaults::admin();
    if let Some(listen) = f
        .listen
        .and_then(|s| r.check("admin.listen", values::socket_addr(&s)))
    {
        admin.listen = listen;
    }
    admin.tokens_sha256 = f
        .tokens_sha256
        .iter()
        .enumerate()
        .filter_map(|(k, t)| {
            r.check(
                &path::index("admin.tokens_sha256", k),
                values::sha256_hex(t),
            )
        })
        .collect();
    admin.update_interval = duration(
        f.update_interval.as_deref(),
        "admin.update_interval",
        defaults::ADMIN_UPDATE_INTERVAL,
        true,
        r,
    )
    .max(MIN_UPDATE_INTERVAL);
    admin
}

pub(super) fn catalog(root: &Table, base: Option<&Path>, r: &mut Report<'_>) -> CatalogConfig {
    let f: CatalogFile = section(root, "catalog", r).unwrap_or_default();
    match f.store.as_deref().unwrap_or("file") {
        "file" => return CatalogConfig::File,
        "etcd" => {}
        other => {
            r.error(
                "catalog.store",
                format!("unknown store `{other}` (known: \"file\", \"etcd\")"),
            );
            return CatalogConfig::File;
        }
    }
    let endpoints = f.etcd_endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        let at = match root.get("catalog").and_then(|c| c.get("etcd_endpoints")) {
            Some(_) => "catalog.etcd_endpoints",
            None => "catalog.store",
        };
        r.error(
            at,
            "store = \"etcd\" needs etcd_endpoints, e.g. [\"http://127.0.0.1:2379\"]",
        );
    }
    for (i, e) in endpoints.iter().enumerate() {
        r.check(&path::index("catalog.etcd_endpoints", i), etcd_endpoint(e));
    }
    if f.etcd_cert.is_some() != f.etcd_key.is_some() {
        let at = if f.etcd_cert.is_some() {
            "catalog.etcd_cert"
        } else {
            "catalog.etcd_key"
        };
        r.error(
            at,
            "etcd_cert and etcd_key go together: set both or neither",
        );
    }
    CatalogConfig::Etcd(EtcdConfig {
        endpoints,
        ca: file_path(f.etcd_ca.as_deref(), "catalog.etcd_ca", base, r),
        cert: file_path(f.etcd_cert.as_deref(), "catalog.etcd_cert", base, r),
        key: file_path(f.etcd_key.as_deref(), "catalog.etcd_key", base, r),
        secret_key_file: file_path(
            f.secret_key_file.as_deref(),
            "catalog.secret_key_file",
            base,
            r,
        ),
    })
}

/// `http://host[:port]` or `https://host[:port]`.
fn etcd_endpoint(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    match rest.map(|h| values::host_port(h.trim_end_matches('/'), false)) {
        Some(Ok(_)) => Ok(()),
        _ => Err(format!(
            "invalid etcd endpoint `{s}`: expected http://host:port or https://host:port"
        )),
    }
}

pub(super) fn limits(root: &Table, r: &mut Report<'_>) -> Limits {
    let f: LimitsFile = section(root, "limits", r).unwrap_or_default();
    let d = Limits::default();
    let mut count = |v: Option<u64>, key: &str, default: usize| {
        v.and_then(|v| r.check(&path::key("limits", key), values::count_usize(v, 1)))
            .unwrap_or(default)
    };
    let max_connections = count(f.max_connections, "max_connections", d.max_connections);
    let max_connections_per_ip = count(
        f.max_connections_per_ip,
        "max_connections_per_ip",
        d.max_connections_per_ip,
    );
    let max_concurrent_handshakes = count(
        f.max_concurrent_handshakes,
        "max_concurrent_handshakes",
        d.max_concurrent_handshakes,
    );
    Limits {
        max_connections,
        max_connections_per_ip,
        max_concurrent_handshakes,
        tls_handshake_timeout: duration(
            f.tls_handshake_timeout.as_deref(),
            "limits.tls_handshake_timeout",
            d.tls_handshake_timeout,
            true,
            r,
        ),
        connect_timeout: duration(
            f.connect_timeout.as_deref(),
            "limits.connect_timeout",
            d.connect_timeout,
            true,
            r,
        ),
    }
}

pub(super) fn cluster(root: &Table, base: Option<&Path>, r: &mut Report<'_>) -> Option<ClusterTls> {
    let f: ClusterFile = section(root, "cluster", r)?;
    let ca = file_path(Some(&f.ca), "cluster.ca", base, r);
    let cert = file_path(Some(&f.cert), "cluster.cert", base, r);
    let key = file_path(Some(&f.key), "cluster.key", base, r);
    Some(ClusterTls {
        ca: ca?,
        cert: cert?,
        key: key?,
    })
}

pub(super) fn acme(root: &Table, base: Option<&Path>, r: &mut Report<'_>) -> Acme {
    let f: AcmeFile = section(root, "acme", r).unwrap_or_default();
    let mut acme = Acme {
        enabled: root.contains_key("acme"),
        ..Acme::default()
    };
    if let Some(dir) = f.directory {
        if !(dir.starts_with("https://") || dir.starts_with("http://")) {
            r.error(
                "acme.directory",
                format!("invalid ACME directory `{dir}`: expected an https:// URL"),
            );
        }
        acme.directory = dir;
    }
    let single = matches!(
        root.get("acme").and_then(|a| a.get("contact")),
        Some(Item::Value(toml_edit::Value::String(_)))
    );
    for (i, c) in f.contact.iter().enumerate() {
        let at = if single {
            "acme.contact".to_string()
        } else {
            path::index("acme.contact", i)
        };
        let ok = c
            .strip_prefix("mailto:")
            .is_some_and(|addr| addr.contains('@') && !addr.contains(char::is_whitespace));
        if !ok {
            r.error(
                &at,
                format!("invalid ACME contact `{c}`: expected mailto:name@example.com"),
            );
        }
    }
    acme.contact = f.contact;
    acme.ca_roots = file_path(f.ca_roots.as_deref(), "acme.ca_roots", base, r);
    acme.state_dir = file_path(f.state_dir.as_deref(), "acme.state_dir", base, r);
    acme.retry_min = duration(
        f.retry_min.as_deref(),
        "acme.retry_min",
        acme.retry_min,
        true,
        r,
    );
    acme.retry_max = duration(
        f.retry_max.as_deref(),
        "acme.retry_max",
        acme.retry_max,
        true,
        r,
    );
    if acme.retry_max < acme.retry_min {
        r.error("acme.retry_max", "must not be shorter than acme.retry_min");
    }
    acme
}

pub(super) fn http(root: &Table, r: &mut Report<'_>) -> Http {
    let f: HttpFile = section(root, "http", r).unwrap_or_default();
    let mut http = defaults::http();
    if let Some(p) = f.header_prefix.clone() {
        let ok = !p.is_empty()
            && p.len() <= 64
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-');
        if !ok {
            r.error(
                "http.header_prefix",
                format!("invalid header_prefix `{p}`: letters, digits and inner `-` only (e.g. \"anyedge\", \"fly\")"),
            );
        }
        http.header_prefix = p;
    }
    http_timeouts(&f, &mut http, r);
    let size = |v: Option<i64>, key: &str, min: i64, r: &mut Report<'_>| {
        v.and_then(|n| {
            if n < min {
                r.error(&format!("http.{key}"), format!("must be at least {min}"));
                None
            } else {
                Some(n)
            }
        })
    };
    if let Some(n) = size(f.max_request_body, "max_request_body", 0, r) {
        http.max_request_body = n as u64;
    }
    if let Some(n) = size(f.max_header_size, "max_header_size", 1024, r) {
        http.max_header_size = n as usize;
    }
    if let Some(n) = size(f.replay_body_limit, "replay_body_limit", 0, r) {
        http.replay_body_limit = n as usize;
    }
    if let Some(dir) = &f.replay_spill_dir {
        if let Some(dir) = r.check("http.replay_spill_dir", values::spill_dir(dir)) {
            http.replay_spill_dir = dir;
        }
    }
    let spill_limit = match &f.replay_spill_limit {
        None => None,
        Some(ByteSize::Count(n)) => size(Some(*n), "replay_spill_limit", 0, r).map(|n| n as u64),
        Some(ByteSize::Text(t)) => r.check("http.replay_spill_limit", values::byte_size(t)),
    };
    if let Some(n) = spill_limit {
        http.replay_spill_limit = n;
    }
    if let Some(n) = size(
        f.h2_max_concurrent_streams,
        "h2_max_concurrent_streams",
        1,
        r,
    ) {
        http.h2_max_concurrent_streams = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = size(f.max_attempts, "max_attempts", 1, r) {
        http.max_attempts = u32::try_from(n).unwrap_or(u32::MAX);
    }
    http.access_log = f.access_log.unwrap_or(http.access_log);
    if let Some(list) = &f.retry_on {
        let mut on = crate::model::RetryOn {
            timeout: false,
            reset: false,
        };
        for v in list {
            match v.as_str() {
                "timeout" => on.timeout = true,
                "reset" => on.reset = true,
                other => r.error(
                    "http.retry_on",
                    format!(
                        "unknown retry condition {other:?}: expected any of {:?}",
                        crate::model::RetryOn::VALUES
                    ),
                ),
            }
        }
        http.retry_on = on;
    }
    http
}

fn http_timeouts(f: &HttpFile, http: &mut Http, r: &mut Report<'_>) {
    let d = Http::default();
    http.header_read_timeout = duration(
        f.header_read_timeout.as_deref(),
        "http.header_read_timeout",
        d.header_read_timeout,
        true,
        r,
    );
    http.idle_timeout = duration(
        f.idle_timeout.as_deref(),
        "http.idle_timeout",
        d.idle_timeout,
        true,
        r,
    );
    http.response_timeout = duration(
        f.response_timeout.as_deref(),
        "http.response_timeout",
        d.response_timeout,
        true,
        r,
    );
    http.upstream_idle_timeout = duration(
        f.upstream_idle_timeout.as_deref(),
        "http.upstream_idle_timeout",
        d.upstream_idle_timeout,
        true,
        r,
    );
    http.retry_deadline = duration(
        f.retry_deadline.as_deref(),
        "http.retry_deadline",
        d.retry_deadline,
        true,
        r,
    );
}

pub(super) fn regions(root: &Table, r: &mut Report<'_>) -> BTreeMap<String, Coordinates> {
    let mut out = BTreeMap::new();
    let Some(item) = root.get("regions") else {
        return out;
    };
    let Some(table) = item.as_table_like() else {
        r.error(
            "regions",
            "expected a table of regions: [regions.NAME] with lat and lon",
        );
        return out;
    };
    for (name, item) in table.iter() {
        let at = path::key("regions", name);
        r.check(&at, values::name("region name", name));
        let Some(f) = de::toml_item::<RegionFile>(item, &at, r) else {
            continue;
        };
        if !(-90.0..=90.0).contains(&f.lat) {
            r.error(
                &path::key(&at, "lat"),
                format!("latitude {} is out of range (-90 to 90)", f.lat),
            );
        }
        if !(-180.0..=180.0).contains(&f.lon) {
            r.error(
                &path::key(&at, "lon"),
                format!("longitude {} is out of range (-180 to 180)", f.lon),
            );
        }
        out.insert(
            name.to_string(),
            Coordinates {
                lat: f.lat,
                lon: f.lon,
            },
        );
    }
    out
}
