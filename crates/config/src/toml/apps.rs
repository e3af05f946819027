//! `[[apps]]` blocks: an app's own keys, then its services, certificates and instances, then the
//! rules across apps (names, hostnames, ports).

use std::path::Path;

use toml_edit::Item;

use super::file::{AppFile, AppLimitsFile, CertificateFile, ConcurrencyFile};
use super::sections::{duration, file_path};
use super::{as_table, instances, list, on_demand, outlier, policy, services};
use crate::de;
use crate::model::{App, AppLimits, CertificateFiles, Concurrency, ConcurrencyType};
use crate::path;
use crate::report::Report;
use crate::validate::claims::{self, HostUse, PortRule, PortUse};
use crate::validate::values;

/// What an app's blocks need from the rest of the file.
pub(super) struct Scope<'a> {
    /// The region of instances that name none.
    pub node_region: &'a str,
    /// The config file's directory, for relative certificate paths.
    pub base: Option<&'a Path>,
    /// `false` for `anyedge apps put` files: workers register instances.
    pub instances_allowed: bool,
    /// This node's id and the other nodes (`[[nodes]]`) an instance's `node` may name.
    pub nodes: Option<(
        &'a str,
        &'a std::collections::BTreeMap<String, crate::model::Peer>,
    )>,
}

/// What every app claims, checked across apps once all are read.
#[derive(Default)]
pub(super) struct Claims {
    pub names: Vec<(String, String)>,
    pub hosts: Vec<HostUse>,
    pub ports: Vec<PortUse>,
}

/// Every `[[apps]]` block, validated alone and against each other.
pub(super) fn apps(item: Option<&Item>, scope: &Scope<'_>, r: &mut Report<'_>) -> Vec<App> {
    let mut claims = Claims::default();
    let apps = list(item.cloned(), "apps", r)
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| app(&path::index("apps", i), item, scope, &mut claims, r))
        .collect();
    claims::unique("app name", &claims.names, r);
    claims::hostnames(&claims.hosts, r);
    claims::ports(&claims.ports, PortRule::Shared, r);
    apps
}

fn app(
    at: &str,
    item: Item,
    scope: &Scope<'_>,
    claims: &mut Claims,
    r: &mut Report<'_>,
) -> Option<App> {
    let mut table = as_table(item, at, r)?;
    let service_items = list(table.remove("services"), &path::key(at, "services"), r);
    let cert_items = list(
        table.remove("certificates"),
        &path::key(at, "certificates"),
        r,
    );
    let instance_items = list(table.remove("instances"), &path::key(at, "instances"), r);
    let file: Option<AppFile> = de::toml_item(&Item::Table(table), at, r);
    let name = file.as_ref().map(|f| f.name.clone()).unwrap_or_default();

    let services: Vec<_> = service_items
        .into_iter()
        .enumerate()
        .filter_map(|(j, item)| {
            let at = path::index(&path::key(at, "services"), j);
            services::service(&name, &at, item, &mut claims.ports, r)
        })
        .collect();
    let certificates = cert_items
        .into_iter()
        .enumerate()
        .filter_map(|(j, item)| {
            certificate(
                &path::index(&path::key(at, "certificates"), j),
                item,
                scope.base,
                r,
            )
        })
        .collect();
    if !scope.instances_allowed && !instance_items.is_empty() {
        r.key_error(
            &path::key(at, "instances"),
            "an apps file carries no instances: workers register their own",
        );
    }
    let instances = instances::of_app(at, &name, instance_items, &services, scope, r);

    let file = file?;
    Some(App {
        services,
        certificates,
        instances,
        ..own_keys(at, file, claims, r)
    })
}

/// The app's own keys (everything but its services, certificates and instances).
fn own_keys(at: &str, file: AppFile, claims: &mut Claims, r: &mut Report<'_>) -> App {
    let name_at = path::key(at, "name");
    r.check(&name_at, values::name("app name", &file.name));
    claims.names.push((file.name.clone(), name_at));
    let mut hostnames = Vec::new();
    for (k, h) in file.hostnames.iter().enumerate() {
        let hat = path::index(&path::key(at, "hostnames"), k);
        if let Some(h) = r.check(&hat, values::hostname(h)) {
            claims.hosts.push(HostUse {
                app: file.name.clone(),
                path: hat,
                name: h.clone(),
            });
            hostnames.push(h);
        }
    }
    let tokens_sha256 = file
        .tokens_sha256
        .iter()
        .enumerate()
        .filter_map(|(k, t)| {
            let tat = path::index(&path::key(at, "tokens_sha256"), k);
            r.check(&tat, values::sha256_hex(t))
        })
        .collect();
    for (k, source) in file.replay_from.iter().enumerate() {
        let rat = path::index(&path::key(at, "replay_from"), k);
        r.check(&rat, values::name("app name", source));
    }
    App {
        concurrency: concurrency(file.concurrency.as_ref(), &path::key(at, "concurrency"), r),
        limits: limits(file.limits.as_ref(), &path::key(at, "limits"), r),
        outlier: outlier::outlier(file.outlier.as_ref(), &path::key(at, "outlier"), r),
        access: policy::access(file.access.as_ref(), &path::key(at, "access"), r),
        rate_limit: policy::rate_limit(file.rate_limit.as_ref(), &path::key(at, "rate_limit"), r),
        retry_budget: policy::retry_budget(
            file.retry_budget.as_ref(),
            &path::key(at, "retry_budget"),
            r,
        ),
        on_demand: on_demand::keys(&file, at, r),
        name: file.name,
        hostnames,
        tokens_sha256,
        replay_from: file.replay_from,
        services: Vec::new(),
        certificates: Vec::new(),
        instances: Vec::new(),
    }
}

/// Per-instance concurrency. `soft_limit` defaults to the smaller of 20 and `hard_limit`.
fn concurrency(f: Option<&ConcurrencyFile>, at: &str, r: &mut Report<'_>) -> Concurrency {
    let d = Concurrency::default();
    let Some(f) = f else { return d };
    let kind = match f.kind.as_deref() {
        None | Some("connections") => ConcurrencyType::Connections,
        Some("requests") => ConcurrencyType::Requests,
        Some(other) => {
            r.error(
                &path::key(at, "type"),
                format!(
                    "unknown concurrency type `{other}` (known: \"connections\", \"requests\")"
                ),
            );
            d.kind
        }
    };
    let hard_at = path::key(at, "hard_limit");
    let soft_at = path::key(at, "soft_limit");
    let hard = f
        .hard_limit
        .and_then(|h| {
            r.check(
                &hard_at,
                values::count_u32(h, 1).map_err(|e| format!("hard_limit {e}")),
            )
        })
        .unwrap_or(d.hard_limit);
    let soft = match f.soft_limit {
        None => d.soft_limit.min(hard),
        Some(s) => r
            .check(
                &soft_at,
                values::count_u32(s, 1).map_err(|e| format!("soft_limit {e}")),
            )
            .unwrap_or(hard),
    };
    if soft > hard {
        r.error(
            &soft_at,
            format!("soft_limit ({soft}) is above hard_limit ({hard})"),
        );
    }
    Concurrency {
        kind,
        soft_limit: soft,
        hard_limit: hard,
    }
}

/// The app's budget on each node.
fn limits(f: Option<&AppLimitsFile>, at: &str, r: &mut Report<'_>) -> AppLimits {
    let d = AppLimits::default();
    let Some(f) = f else { return d };
    let mut count = |v: Option<u64>, key: &str, min: u64, default: u32| {
        v.and_then(|v| {
            r.check(
                &path::key(at, key),
                values::count_u32(v, min).map_err(|e| format!("{key} {e}")),
            )
        })
        .unwrap_or(default)
    };
    let max_inflight = count(f.max_inflight, "max_inflight", 1, d.max_inflight);
    let queue = count(f.queue, "queue", 0, d.queue);
    let max_connections = count(f.max_connections, "max_connections", 1, d.max_connections);
    AppLimits {
        max_inflight,
        queue,
        max_connections,
        queue_timeout: duration(
            f.queue_timeout.as_deref(),
            &path::key(at, "queue_timeout"),
            d.queue_timeout,
            false,
            r,
        ),
    }
}

fn certificate(
    at: &str,
    item: Item,
    base: Option<&Path>,
    r: &mut Report<'_>,
) -> Option<CertificateFiles> {
    let f: CertificateFile = de::toml_item(&item, at, r)?;
    let cert = file_path(Some(&f.cert), &path::key(at, "cert"), base, r);
    let key = file_path(Some(&f.key), &path::key(at, "key"), base, r);
    Some(CertificateFiles {
        cert: cert?,
        key: key?,
    })
}
