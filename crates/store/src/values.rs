//! Values under the keys, JSON with a `"schema"` version. Decoding is lenient: unknown fields
//! (from a newer node) are ignored, a newer schema number is read as far as it is understood,
//! and a value that cannot be read is an error for the caller to log and skip.
//!
//! An app's value is the `[[apps]]` block of the config file, as JSON, without instances, plus
//! `"schema": 1`; it is validated by the config crate's own rules (through TOML, so the two can
//! never drift).

use anyedge_config::{App, ConcurrencyType, Instance, ProxyProtoVersion};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The schema version this node writes.
pub const SCHEMA: u32 = 1;

/// Why a value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no \"schema\" version (or not a positive integer)")]
    NoSchema,
    #[error("{0}")]
    Invalid(String),
    #[error("{field} is `{found}` but the key says `{key}`")]
    KeyMismatch {
        field: &'static str,
        found: String,
        key: String,
    },
}

/// `instances/<app>/<instance>`: an instance a worker runs, under that worker's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceValue {
    pub schema: u32,
    pub id: String,
    pub region: String,
    pub address: String,
    /// The node that registered it.
    pub node: String,
    /// The kind of its driver (`command`, `http`) when it has one: the registering node starts
    /// and stops it, and edges ask that node for its starts over backhaul (`docs/on-demand.md`).
    /// Absent without a driver; nodes that predate it ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// `nodes/<node>`: a node, under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeValue {
    pub schema: u32,
    pub id: String,
    pub region: String,
    /// What other nodes dial (backhaul); absent when the node has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
}

pub(crate) fn schema_of(v: &Value) -> Result<u32, DecodeError> {
    v.get("schema")
        .and_then(Value::as_u64)
        .filter(|s| *s >= 1)
        .and_then(|s| u32::try_from(s).ok())
        .ok_or(DecodeError::NoSchema)
}

fn key_matches(field: &'static str, found: &str, key: &str) -> Result<(), DecodeError> {
    match found == key {
        true => Ok(()),
        false => Err(DecodeError::KeyMismatch {
            field,
            found: found.to_string(),
            key: key.to_string(),
        }),
    }
}

impl InstanceValue {
    /// Decode the value of `instances/<app>/<id>`; the address and names are checked.
    pub fn decode(bytes: &[u8], id: &str) -> Result<(InstanceValue, Instance), DecodeError> {
        let v: Value = serde_json::from_slice(bytes)?;
        schema_of(&v)?;
        let value: InstanceValue = serde_json::from_value(v)?;
        key_matches("id", &value.id, id)?;
        let invalid = DecodeError::Invalid;
        anyedge_config::rules::name("instance id", &value.id).map_err(invalid)?;
        anyedge_config::rules::name("region name", &value.region).map_err(invalid)?;
        anyedge_config::rules::name("node id", &value.node).map_err(invalid)?;
        let address = anyedge_config::rules::host_port(&value.address).map_err(invalid)?;
        let instance = Instance {
            id: value.id.clone(),
            region: value.region.clone(),
            address,
            node: None,
            // Any kind: this node only needs to know there is a driver, run elsewhere.
            driver: value
                .driver
                .is_some()
                .then_some(anyedge_config::Driver::Elsewhere),
        };
        Ok((value, instance))
    }

    pub fn new(instance: &Instance, node: &str) -> InstanceValue {
        InstanceValue {
            schema: SCHEMA,
            id: instance.id.clone(),
            region: instance.region.clone(),
            address: instance.address.to_string(),
            node: node.to_string(),
            driver: instance.driver.as_ref().map(|d| d.kind().to_string()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl NodeValue {
    pub fn decode(bytes: &[u8], id: &str) -> Result<NodeValue, DecodeError> {
        let v: Value = serde_json::from_slice(bytes)?;
        schema_of(&v)?;
        let value: NodeValue = serde_json::from_value(v)?;
        key_matches("id", &value.id, id)?;
        anyedge_config::rules::name("region name", &value.region).map_err(DecodeError::Invalid)?;
        Ok(value)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Decode the value of `apps/<name>`. Returns the app and the key paths that were ignored
/// (unknown to this version).
pub fn decode_app(bytes: &[u8], name: &str) -> Result<(App, Vec<String>), DecodeError> {
    let v: Value = serde_json::from_slice(bytes)?;
    schema_of(&v)?;
    let Value::Object(mut fields) = v else {
        return Err(DecodeError::Invalid("an app value is a JSON object".into()));
    };
    fields.remove("schema");
    let mut table = toml_edit::Table::new();
    for (k, v) in fields {
        if let Some(v) = to_toml(v)? {
            table.insert(&k, toml_edit::Item::Value(v));
        }
    }
    let mut doc = toml_edit::DocumentMut::new();
    let mut apps = toml_edit::ArrayOfTables::new();
    apps.push(table);
    doc.insert("apps", toml_edit::Item::ArrayOfTables(apps));
    let origin = format!("etcd apps/{name}");
    let (mut apps, ignored) = anyedge_config::parse_apps_lenient(&doc.to_string(), &origin)
        .map_err(|d| DecodeError::Invalid(d.to_string().trim_end().replace('\n', "; ")))?;
    let app = apps
        .pop()
        .ok_or_else(|| DecodeError::Invalid("no app in the value".into()))?;
    key_matches("name", &app.name, name)?;
    Ok((app, ignored))
}

/// JSON to a TOML value; `null` is left out.
fn to_toml(v: Value) -> Result<Option<toml_edit::Value>, DecodeError> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => b.into(),
        Value::String(s) => s.into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into(),
            (None, Some(f)) if n.is_f64() => f.into(),
            _ => return Err(DecodeError::Invalid(format!("number {n} out of range"))),
        },
        Value::Array(items) => {
            let mut a = toml_edit::Array::new();
            for item in items {
                if let Some(v) = to_toml(item)? {
                    a.push(v);
                }
            }
            toml_edit::Value::Array(a)
        }
        Value::Object(fields) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, v) in fields {
                if let Some(v) = to_toml(v)? {
                    t.insert(&k, v);
                }
            }
            toml_edit::Value::InlineTable(t)
        }
    }))
}

/// The value of `apps/<name>` for a validated app (its instances are not written). Every
/// setting is written out, defaults included, so a later change of a default does not change
/// a running app silently.
pub fn encode_app(app: &App) -> Vec<u8> {
    let services: Vec<Value> = app.services.iter().map(service).collect();
    let mut v = json!({
        "schema": SCHEMA,
        "name": app.name,
        "hostnames": app.hostnames,
        "concurrency": {
            "type": match app.concurrency.kind {
                ConcurrencyType::Connections => "connections",
                ConcurrencyType::Requests => "requests",
            },
            "soft_limit": app.concurrency.soft_limit,
            "hard_limit": app.concurrency.hard_limit,
        },
        "limits": {
            "max_inflight": app.limits.max_inflight,
            "queue": app.limits.queue,
            "queue_timeout": duration(app.limits.queue_timeout),
            "max_connections": app.limits.max_connections,
        },
        "outlier": {
            "consecutive_failures": app.outlier.consecutive_failures,
            "base_ejection": duration(app.outlier.base_ejection),
            "max_ejection": duration(app.outlier.max_ejection),
            "gateway_errors": app.outlier.gateway_errors,
        },
        "retry_budget": {
            "ratio": app.retry_budget.ratio,
            "min_per_second": app.retry_budget.min_per_second,
        },
        "tokens_sha256": app.tokens_sha256.iter().map(|t| hex(t)).collect::<Vec<_>>(),
        "replay_from": app.replay_from,
        "services": services,
    });
    if let Some(a) = &app.access {
        v["access"] = access(a);
    }
    if let Some(l) = &app.rate_limit {
        v["rate_limit"] = json!({"per_client": l.per_client, "burst": l.burst, "total": l.total});
    }
    if !app.certificates.is_empty() {
        v["certificates"] = app
            .certificates
            .iter()
            .map(|c| json!({"cert": c.cert.display().to_string(), "key": c.key.display().to_string()}))
            .collect();
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `access` as written: its blocks as text.
fn access(a: &anyedge_config::Access) -> Value {
    let text = |l: &[anyedge_config::Cidr]| l.iter().map(ToString::to_string).collect::<Vec<_>>();
    json!({"allow": text(&a.allow), "deny": text(&a.deny)})
}

fn service(s: &anyedge_config::Service) -> Value {
    let mut v = Map::new();
    if let Some(p) = s.internal_port {
        v.insert("internal_port".into(), p.into());
    }
    v.insert("force_https".into(), s.force_https.into());
    v.insert(
        "http_options".into(),
        json!({"h2_backend": s.http_options.h2_backend, "idle_timeout": duration(s.http_options.idle_timeout)}),
    );
    v.insert(
        "tcp_options".into(),
        json!({"idle_timeout": duration(s.tcp_options.idle_timeout)}),
    );
    if let Some(a) = &s.access {
        v.insert("access".into(), access(a));
    }
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({
                "port": p.port,
                "handlers": p.handlers.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            });
            if let Some(pp) = p.proxy_proto {
                port["proxy_proto"] = match pp {
                    ProxyProtoVersion::V1 => "v1",
                    ProxyProtoVersion::V2 => "v2",
                }
                .into();
            }
            if let Some(bind) = p.bind {
                port["bind"] = bind.to_string().into();
            }
            port
        })
        .collect();
    v.insert("ports".into(), ports.into());
    let checks: Vec<Value> = s
        .checks
        .iter()
        .map(|c| {
            let mut check = json!({
                "interval": duration(c.interval),
                "timeout": duration(c.timeout),
                "grace_period": duration(c.grace_period),
                "unhealthy_threshold": c.unhealthy_threshold,
                "healthy_threshold": c.healthy_threshold,
            });
            match &c.kind {
                anyedge_config::CheckKind::Tcp => check["type"] = "tcp".into(),
                anyedge_config::CheckKind::Http { path } => {
                    check["type"] = "http".into();
                    check["path"] = path.clone().into();
                }
            }
            check
        })
        .collect();
    v.insert("checks".into(), checks.into());
    Value::Object(v)
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
