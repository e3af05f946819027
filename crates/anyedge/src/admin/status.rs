//! The picture the dashboard, `/v1/status` and `anyedge status` show: the node, its catalog,
//! listeners, reloads, certificates, and every app with its instances and traffic. Read from
//! what the node already keeps (the snapshot in force, the live per-instance state, the
//! metrics counters), never from anything the request path has to feed: building it costs the
//! reader, not the traffic.
//!
//! The owner's view ([`app_status`]) is built from one app's entry and that app's counters
//! alone, so nothing of another app can reach it.

use super::history::Window;
use super::AdminState;
use anyedge_catalog::{AppEntry, InstanceEntry, Snapshot};
use anyedge_config::{ConcurrencyType, Handler};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The version of the JSON's shape: a consumer may refuse one it does not know.
pub const STATUS_VERSION: u32 = 1;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The whole picture (`/v1/status`), serialized directly: the sections that are small or
/// change little are `Value`s, the apps (most of the picture) are structs.
#[derive(Serialize)]
pub struct NodeStatus<'a> {
    apps_total: usize,
    version: u32,
    time_ms: u64,
    node: Value,
    catalog: Value,
    listeners: Value,
    reloads: Value,
    regions: Value,
    certificates: Value,
    apps: Vec<AppJson<'a>>,
}

/// `/v1/status`: everything, for the operator; with `max_apps`, only that many apps (the
/// busiest: most requests and connections since start, then by name), for the live stream,
/// which sends the picture every second to every open page.
pub fn node_status<'a>(
    state: &AdminState,
    snapshot: &'a Snapshot,
    sorted: &'a [Arc<AppEntry>],
    max_apps: Option<usize>,
) -> NodeStatus<'a> {
    let now = Instant::now();
    let mut chosen: Vec<&Arc<AppEntry>> = sorted.iter().collect();
    let apps_total = chosen.len();
    if let Some(max) = max_apps.filter(|m| *m < chosen.len()) {
        let traffic = |a: &AppEntry| {
            state
                .metrics
                .existing_app(&a.name)
                .map_or(0, |m| m.http_total() + m.tcp_connects())
        };
        let mut keyed: Vec<_> = chosen.into_iter().map(|a| (traffic(a), a)).collect();
        keyed.sort_by(|(ta, a), (tb, b)| tb.cmp(ta).then_with(|| a.name.cmp(&b.name)));
        keyed.truncate(max);
        chosen = keyed.into_iter().map(|(_, a)| a).collect();
        chosen.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let history = state.history();
    let apps: Vec<AppJson<'a>> = chosen
        .into_iter()
        .map(|a| app_json(state, snapshot, a, history.window(&a.name), now))
        .collect();
    drop(history);
    NodeStatus {
        apps_total,
        version: STATUS_VERSION,
        time_ms: unix_ms(SystemTime::now()),
        node: node_json(state, snapshot),
        catalog: catalog_json(state),
        listeners: listeners_json(state, snapshot),
        reloads: state.reloads_json(),
        regions: regions_json(snapshot, sorted, now),
        certificates: certificates_json(state, snapshot, None),
        apps,
    }
}

/// An app's own picture (`/v1/apps/<app>/status`).
#[derive(Serialize)]
pub struct AppStatus<'a> {
    version: u32,
    time_ms: u64,
    node: Value,
    certificates: Value,
    app: AppJson<'a>,
}

/// `/v1/apps/<app>/status`: one app, for its owners. The node's id and region say where the
/// figures were counted; nothing else of the node, and nothing of any other app.
pub fn app_status<'a>(
    state: &AdminState,
    snapshot: &'a Snapshot,
    app: &'a AppEntry,
) -> AppStatus<'a> {
    let now = Instant::now();
    let window = state.history().window(&app.name);
    AppStatus {
        version: STATUS_VERSION,
        time_ms: unix_ms(SystemTime::now()),
        node: json!({ "id": snapshot.config.node.id, "region": snapshot.config.node.region }),
        certificates: certificates_json(state, snapshot, Some(app)),
        app: app_json(state, snapshot, app, window, now),
    }
}

fn node_json(state: &AdminState, snapshot: &Snapshot) -> Value {
    let node = &snapshot.config.node;
    let mut roles = Vec::new();
    if node.roles.edge {
        roles.push("edge");
    }
    if node.roles.worker {
        roles.push("worker");
    }
    let m = &state.metrics.node;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "id": node.id,
        "region": node.region,
        "roles": roles,
        "status": if state.drain.is_draining() { "draining" } else { "ok" },
        "generation": snapshot.generation,
        "process_generation": get(&m.process_generation),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "open_connections": state.drain.open_connections(),
        "admin_token_required": !snapshot.config.admin.tokens_sha256.is_empty(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn catalog_json(state: &AdminState) -> Value {
    match state.catalog() {
        None => json!({ "store": "file", "connected": true, "stale_seconds": 0.0 }),
        Some(c) => json!({
            "store": "etcd",
            "connected": c.connected(),
            "stale_seconds": c.stale_for().as_secs_f64(),
            "revision": c.revision(),
            "disconnects": c.disconnects(),
            "graced_instances": c.graced(),
            "last_error": c.last_error(),
        }),
    }
}

/// Each listening address with the handlers and apps the config puts on its port.
fn listeners_json(state: &AdminState, snapshot: &Snapshot) -> Value {
    let mut by_port: BTreeMap<u16, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for app in &snapshot.config.apps {
        for port in app.services.iter().flat_map(|s| &s.ports) {
            let (handlers, apps) = by_port.entry(port.port).or_default();
            let kind = if port.is_raw_tcp() {
                "tcp"
            } else if port.handlers.contains(&Handler::Tls) {
                "https"
            } else {
                "http"
            };
            if !handlers.contains(&kind) {
                handlers.push(kind);
            }
            if !apps.contains(&app.name.as_str()) {
                apps.push(&app.name);
            }
        }
    }
    let listeners: Vec<Value> = state
        .listening()
        .into_iter()
        .map(|addr| {
            let (kinds, apps) = by_port.get(&addr.port()).cloned().unwrap_or_default();
            json!({ "address": addr.to_string(), "kinds": kinds, "apps": apps.len() })
        })
        .collect();
    Value::Array(listeners)
}

/// Regions with the nodes seen running instances in them, each node's measured RTT from
/// this node, and the instances' health counts.
fn regions_json(snapshot: &Snapshot, apps: &[Arc<AppEntry>], now: Instant) -> Value {
    #[derive(Default)]
    struct NodeAgg {
        rtt_us: Option<u32>,
        instances: usize,
        healthy: usize,
        feed_age_ms: Option<u128>,
    }
    let own = &snapshot.config.node;
    let mut regions: BTreeMap<&str, BTreeMap<&str, NodeAgg>> = BTreeMap::new();
    regions
        .entry(own.region.as_str())
        .or_default()
        .entry(own.id.as_str())
        .or_default();
    for app in apps {
        for inst in &app.instances {
            let node = inst.peer.as_ref().map_or(own.id.as_str(), |p| &p.id);
            let agg = regions
                .entry(&inst.region)
                .or_default()
                .entry(node)
                .or_default();
            agg.rtt_us = inst.peer.as_ref().and_then(|p| p.live.rtt_us());
            agg.instances += 1;
            agg.healthy += usize::from(placeable(inst, now));
            if let Some(age) = inst.live.last_report_age(now) {
                let age = age.as_millis();
                agg.feed_age_ms = Some(agg.feed_age_ms.map_or(age, |a: u128| a.min(age)));
            }
        }
    }
    let coords = &snapshot.config.regions;
    let list: Vec<Value> = regions
        .into_iter()
        .map(|(region, nodes)| {
            let nodes: Vec<Value> = nodes
                .into_iter()
                .map(|(id, a)| {
                    json!({
                        "id": id,
                        "self": id == own.id,
                        "rtt_ms": a.rtt_us.map(|r| f64::from(r) / 1000.0),
                        "instances": a.instances,
                        "healthy": a.healthy,
                        "load_feed_age_ms": a.feed_age_ms,
                    })
                })
                .collect();
            let c = coords.get(region);
            json!({
                "name": region,
                "lat": c.map(|c| c.lat),
                "lon": c.map(|c| c.lon),
                "nodes": nodes,
            })
        })
        .collect();
    Value::Array(list)
}

/// Certificates with their expiry, where they come from (static file or ACME) and the ACME
/// task's state of the name; with `only`, that app's hostnames alone. A TLS hostname without
/// a certificate is listed too (`"source": "none"`; with ACME on, its `acme` state says why).
fn certificates_json(state: &AdminState, snapshot: &Snapshot, only: Option<&AppEntry>) -> Value {
    let now = i64::try_from(unix_ms(SystemTime::now()) / 1000).unwrap_or(i64::MAX);
    // Hostname -> app, for every app's TLS hostnames.
    let mut tls_hosts: BTreeMap<&str, &str> = BTreeMap::new();
    for app in &snapshot.config.apps {
        let tls = app
            .services
            .iter()
            .flat_map(|s| &s.ports)
            .any(|p| p.handlers.contains(&Handler::Tls));
        if tls {
            for h in &app.hostnames {
                tls_hosts.insert(h, &app.name);
            }
        }
    }
    let served: BTreeMap<String, (i64, bool)> = state
        .metrics
        .cert_expiries()
        .into_iter()
        .map(|(h, at, acme)| (h, (at, acme)))
        .collect();
    let acme = state.metrics.acme_hosts();
    let mut names: Vec<&str> = tls_hosts.keys().copied().collect();
    names.extend(served.keys().map(String::as_str));
    names.extend(acme.keys().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for host in names {
        let app = tls_hosts.get(host).copied();
        if only.is_some_and(|o| app != Some(&*o.name)) {
            continue;
        }
        let (not_after, source) = match served.get(host) {
            Some((at, true)) => (Some(*at), "acme"),
            Some((at, false)) => (Some(*at), "static"),
            None => (None, "none"),
        };
        let a = acme.get(host);
        out.push(json!({
            "hostname": host,
            "app": app,
            "source": source,
            "not_after": not_after,
            "expires_in_days": not_after.map(|t| (t - now) as f64 / 86400.0),
            "acme": a.map(|a| a.state),
            "acme_error": a.and_then(|a| a.error.clone()),
            "acme_failures": a.map(|a| a.failures),
            "acme_next_attempt": a.and_then(|a| a.next_attempt),
        }));
    }
    Value::Array(out)
}

/// Whether placement may choose it now (the same rule as `anyedge_instance_healthy`).
fn placeable(inst: &InstanceEntry, now: Instant) -> bool {
    inst.live.healthy(now) && !inst.live.outlier.ejected(now)
}

/// One word for an instance's health, as the `P-Route` trace says it.
fn health_word(inst: &InstanceEntry, now: Instant) -> &'static str {
    if !inst.live.healthy(now) {
        "unhealthy"
    } else if inst.live.outlier_held(now) {
        "ejected"
    } else if inst.live.silent(now) {
        "silent"
    } else if inst.live.backing_off(now) {
        "backing_off"
    } else {
        "ok"
    }
}

fn limit(n: u32) -> Option<u32> {
    (n != u32::MAX).then_some(n)
}

/// One instance as the picture shows it: a struct serialized directly (no `Value` tree: the
/// live stream builds this for every instance up to 1,000 times a second).
#[derive(Serialize)]
struct InstanceJson<'a> {
    id: &'a str,
    region: &'a str,
    node: &'a str,
    address: String,
    /// Lifecycle (docs/on-demand.md): an instance without a driver is running while listed.
    state: &'static str,
    healthy: bool,
    health: &'static str,
    inflight: u32,
    inflight_here: u32,
    reported_inflight: Option<u32>,
    soft_limit: Option<u32>,
    hard_limit: Option<u32>,
    rtt_ms: Option<f64>,
    distance_ms: f64,
    load_feed_age_ms: Option<u64>,
    consecutive_failures: u32,
}

fn instance_json<'a>(
    snapshot: &'a Snapshot,
    app: &'a AppEntry,
    inst: &'a InstanceEntry,
    now: Instant,
) -> InstanceJson<'a> {
    let c = app.config.concurrency;
    let node = inst
        .peer
        .as_ref()
        .map_or(snapshot.config.node.id.as_str(), |p| &p.id);
    InstanceJson {
        id: inst.id.instance(),
        region: &inst.region,
        node,
        address: inst.address.to_string(),
        state: inst.live.power.state().as_str(),
        healthy: placeable(inst, now),
        health: health_word(inst, now),
        inflight: inst.live.load(now),
        inflight_here: inst.live.inflight.in_use(),
        reported_inflight: inst.live.reported(now).map(|r| r.inflight),
        soft_limit: limit(c.soft_limit),
        hard_limit: limit(c.hard_limit),
        rtt_ms: inst
            .peer
            .as_ref()
            .and_then(|p| p.live.rtt_us())
            .map(|r| f64::from(r) / 1000.0),
        distance_ms: f64::from(inst.distance_us()) / 1000.0,
        load_feed_age_ms: inst
            .live
            .last_report_age(now)
            .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        consecutive_failures: inst.live.consecutive_failures(),
    }
}

#[derive(Serialize)]
struct Responses {
    #[serde(rename = "1xx")]
    c1: u64,
    #[serde(rename = "2xx")]
    c2: u64,
    #[serde(rename = "3xx")]
    c3: u64,
    #[serde(rename = "4xx")]
    c4: u64,
    #[serde(rename = "5xx")]
    c5: u64,
}

/// One app as the picture shows it (serialized directly, as [`InstanceJson`]).
#[derive(Serialize)]
pub(super) struct AppJson<'a> {
    name: &'a str,
    hostnames: &'a [String],
    concurrency: &'static str,
    inflight: u32,
    max_inflight: Option<u32>,
    queued: u32,
    queue: Option<u32>,
    connections: u32,
    max_connections: Option<u32>,
    requests_total: u64,
    responses: Responses,
    status_codes: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    tcp_connects_total: u64,
    tcp_active: i64,
    bytes_in: u64,
    bytes_out: u64,
    window: Option<Value>,
    regions: Vec<&'a str>,
    instances_healthy: usize,
    instances: Vec<InstanceJson<'a>>,
}

fn app_json<'a>(
    state: &AdminState,
    snapshot: &'a Snapshot,
    app: &'a AppEntry,
    window: Option<Window>,
    now: Instant,
) -> AppJson<'a> {
    let c = app.config.concurrency;
    let l = &app.config.limits;
    let metrics = state.metrics.existing_app(&app.name);
    let mut statuses = BTreeMap::new();
    let mut classes = [0u64; 5];
    let mut errors = BTreeMap::new();
    let (mut requests, mut tcp_connects, mut tcp_active, mut bytes) = (0, 0, 0, (0, 0));
    if let Some(m) = &metrics {
        for (status, n) in m.http_statuses() {
            statuses.insert(status, n);
            classes[usize::from(status / 100).clamp(1, 5) - 1] += n;
            requests += n;
        }
        errors.extend(m.error_counts());
        tcp_connects = m.tcp_connects();
        tcp_active = m.tcp_active();
        bytes = (
            m.bytes(anyedge_telemetry::Direction::In),
            m.bytes(anyedge_telemetry::Direction::Out),
        );
    }
    let instances: Vec<InstanceJson<'a>> = app
        .instances
        .iter()
        .map(|i| instance_json(snapshot, app, i, now))
        .collect();
    let healthy = instances.iter().filter(|i| i.healthy).count();
    AppJson {
        name: &app.name,
        hostnames: &app.config.hostnames,
        concurrency: match c.kind {
            ConcurrencyType::Requests => "requests",
            ConcurrencyType::Connections => "connections",
        },
        inflight: app.live.inflight.in_use(),
        max_inflight: limit(l.max_inflight),
        queued: app.live.waiting(),
        queue: limit(l.queue),
        connections: app.live.connections.in_use(),
        max_connections: limit(l.max_connections),
        requests_total: requests,
        responses: Responses {
            c1: classes[0],
            c2: classes[1],
            c3: classes[2],
            c4: classes[3],
            c5: classes[4],
        },
        status_codes: statuses,
        errors,
        tcp_connects_total: tcp_connects,
        tcp_active,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
        window: window.map(Window::to_json),
        regions: app.regions.iter().map(|r| &**r).collect(),
        instances_healthy: healthy,
        instances,
    }
}
