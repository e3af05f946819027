//! `[[apps.services]]`: edge ports with their handlers, the instance port, HTTP options and
//! health checks.

use std::time::Duration;

use toml_edit::Item;

use super::file::{CheckFile, HttpOptionsFile, PortFile, ServiceFile, TcpOptionsFile};
use super::sections::duration;
use super::{as_table, list};
use crate::de;
use crate::model::{
    Check, CheckKind, Handler, HttpOptions, PortSpec, ProxyProtoVersion, Service, TcpOptions,
};
use crate::path;
use crate::report::Report;
use crate::validate::claims::PortUse;
use crate::validate::values;

/// Health check defaults.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const CHECK_GRACE_PERIOD: Duration = Duration::from_secs(5);
pub(crate) const CHECK_UNHEALTHY_THRESHOLD: u32 = 3;
pub(crate) const CHECK_HEALTHY_THRESHOLD: u32 = 2;

/// One service of app `app` at `at`; its ports are added to `ports` for the checks across apps.
pub(super) fn service(
    app: &str,
    at: &str,
    item: Item,
    ports: &mut Vec<PortUse>,
    r: &mut Report<'_>,
) -> Option<Service> {
    let mut table = as_table(item, at, r)?;
    let ports_at = path::key(at, "ports");
    let port_items = list(table.remove("ports"), &ports_at, r);
    let check_items = list(table.remove("checks"), &path::key(at, "checks"), r);
    let file: Option<ServiceFile> = de::toml_item(&Item::Table(table), at, r);

    if port_items.is_empty() {
        r.error(
            at,
            "a service needs at least one port: ports = [{ port = 80, handlers = [\"http\"] }]",
        );
    }
    let specs = port_specs(app, &ports_at, port_items, ports, r);
    let checks = check_items
        .into_iter()
        .enumerate()
        .filter_map(|(k, item)| check(&path::index(&path::key(at, "checks"), k), item, r))
        .collect();

    let file = file?;
    let internal_port = file
        .internal_port
        .and_then(|p| r.check(&path::key(at, "internal_port"), values::port(p)));
    if file.force_https {
        check_https_port(at, &specs, r);
    }
    Some(Service {
        internal_port,
        force_https: file.force_https,
        http_options: http_options(
            file.http_options.as_ref(),
            &path::key(at, "http_options"),
            r,
        ),
        tcp_options: tcp_options(file.tcp_options.as_ref(), &path::key(at, "tcp_options"), r),
        access: super::policy::access(file.access.as_ref(), &path::key(at, "access"), r),
        ports: specs,
        checks,
    })
}

/// The usable ports of app `app`'s service (the list at `ports_at`), each also added to
/// `ports` for the checks across apps.
fn port_specs(
    app: &str,
    ports_at: &str,
    items: Vec<Item>,
    ports: &mut Vec<PortUse>,
    r: &mut Report<'_>,
) -> Vec<PortSpec> {
    items
        .into_iter()
        .enumerate()
        .filter_map(|(k, item)| {
            let at = path::index(ports_at, k);
            let spec = port(&at, item, r)?;
            ports.push(PortUse {
                app: app.to_string(),
                path: path::key(&at, "port"),
                port: spec.port,
                bind: spec.bind,
                handlers: spec.handlers.clone(),
                proxy_proto: spec.proxy_proto,
            });
            Some(spec)
        })
        .collect()
}

/// `force_https` of the service at `at` needs a TLS-then-HTTP port to redirect to.
fn check_https_port(at: &str, specs: &[PortSpec], r: &mut Report<'_>) {
    let tls_http = [Handler::Tls, Handler::Http];
    if !specs.iter().any(|p| p.handlers == tls_http) {
        r.error(
            &path::key(at, "force_https"),
            "force_https needs a port with handlers [\"tls\", \"http\"] in this service to redirect to",
        );
    }
}

/// `tcp_options = { idle_timeout }`; `"0s"` turns the idle timeout off.
fn tcp_options(f: Option<&TcpOptionsFile>, at: &str, r: &mut Report<'_>) -> TcpOptions {
    let d = TcpOptions::default();
    let Some(f) = f else { return d };
    let at = path::key(at, "idle_timeout");
    let idle_timeout = duration(f.idle_timeout.as_deref(), &at, d.idle_timeout, false, r);
    TcpOptions { idle_timeout }
}

fn http_options(f: Option<&HttpOptionsFile>, at: &str, r: &mut Report<'_>) -> HttpOptions {
    let d = HttpOptions::default();
    let Some(f) = f else { return d };
    HttpOptions {
        h2_backend: f.h2_backend.unwrap_or(d.h2_backend),
        idle_timeout: duration(
            f.idle_timeout.as_deref(),
            &path::key(at, "idle_timeout"),
            d.idle_timeout,
            true,
            r,
        ),
    }
}

/// `{ port, handlers, proxy_proto, bind }`; `None` when the port itself is unusable.
fn port(at: &str, item: Item, r: &mut Report<'_>) -> Option<PortSpec> {
    let f: PortFile = de::toml_item(&item, at, r)?;
    let number = r.check(&path::key(at, "port"), values::port(f.port));
    let handlers = handlers(&f.handlers, &path::key(at, "handlers"), r);
    let has_pp = handlers.contains(&Handler::ProxyProto);
    let proxy_proto = match (f.proxy_proto.as_deref(), has_pp) {
        (None, false) => None,
        (None, true) | (Some("v1"), true) => Some(ProxyProtoVersion::V1),
        (Some("v2"), true) => Some(ProxyProtoVersion::V2),
        (Some(other), true) => {
            r.error(
                &path::key(at, "proxy_proto"),
                format!("unknown proxy_proto version `{other}` (known: \"v1\", \"v2\")"),
            );
            Some(ProxyProtoVersion::V1)
        }
        (Some(_), false) => {
            r.error(
                &path::key(at, "proxy_proto"),
                "proxy_proto is set but the handlers do not include \"proxy_proto\"",
            );
            None
        }
    };
    let bind = f
        .bind
        .and_then(|b| r.check(&path::key(at, "bind"), values::ip(&b)))
        // `0.0.0.0` and `::` mean every address: the same listener as no `bind` at all.
        .filter(|ip| !ip.is_unspecified());
    Some(PortSpec {
        port: number?,
        bind,
        handlers,
        proxy_proto,
    })
}

/// A handler list: every name known, none twice, and the list one of the supported stacks.
fn handlers(names: &[String], at: &str, r: &mut Report<'_>) -> Vec<Handler> {
    let mut out = Vec::new();
    let mut ok = true;
    for (n, name) in names.iter().enumerate() {
        let hat = path::index(at, n);
        match r.check(&hat, values::handler(name)) {
            Some(h) if out.contains(&h) => {
                r.error(&hat, format!("duplicate handler `{name}`"));
                ok = false;
            }
            Some(h) => out.push(h),
            None => ok = false,
        }
    }
    if ok {
        r.check(at, values::handler_list(&out));
    }
    out
}

fn check(at: &str, item: Item, r: &mut Report<'_>) -> Option<Check> {
    let f: CheckFile = de::toml_item(&item, at, r)?;
    let kind = check_kind(at, f.kind.as_deref(), f.path.clone(), r);
    let key = |k: &str| path::key(at, k);
    let interval = duration(
        f.interval.as_deref(),
        &key("interval"),
        CHECK_INTERVAL,
        true,
        r,
    );
    let timeout = duration(
        f.timeout.as_deref(),
        &key("timeout"),
        CHECK_TIMEOUT,
        true,
        r,
    );
    if timeout > interval {
        // At the timeout if the file sets one; else the interval is shorter than the default.
        let k = if f.timeout.is_some() {
            "timeout"
        } else {
            "interval"
        };
        timeout_over_interval(&key(k), timeout, interval, r);
    }
    let unhealthy_threshold = threshold(
        at,
        f.unhealthy_threshold,
        "unhealthy_threshold",
        CHECK_UNHEALTHY_THRESHOLD,
        r,
    );
    let healthy_threshold = threshold(
        at,
        f.healthy_threshold,
        "healthy_threshold",
        CHECK_HEALTHY_THRESHOLD,
        r,
    );
    Some(Check {
        kind,
        interval,
        timeout,
        grace_period: duration(
            f.grace_period.as_deref(),
            &key("grace_period"),
            CHECK_GRACE_PERIOD,
            false,
            r,
        ),
        unhealthy_threshold,
        healthy_threshold,
    })
}

/// A check whose timeout is longer than its interval, reported at `at`.
fn timeout_over_interval(at: &str, timeout: Duration, interval: Duration, r: &mut Report<'_>) {
    r.error(
        at,
        format!(
            "check timeout ({}) is longer than its interval ({})",
            humantime::format_duration(timeout),
            humantime::format_duration(interval)
        ),
    );
}

/// The threshold `k` of the check at `at`: at least 1; `default` when not set (or unusable).
fn threshold(at: &str, v: Option<u64>, k: &str, default: u32, r: &mut Report<'_>) -> u32 {
    v.and_then(|v| {
        r.check(
            &path::key(at, k),
            values::count_u32(v, 1).map_err(|e| format!("{k} {e}")),
        )
    })
    .unwrap_or(default)
}

/// `type` and `path` of a check: `path` belongs to HTTP checks alone and defaults to `/`.
fn check_kind(at: &str, kind: Option<&str>, p: Option<String>, r: &mut Report<'_>) -> CheckKind {
    match (kind, p) {
        (Some("http"), p) => {
            let p = p.unwrap_or_else(|| "/".to_string());
            if !p.starts_with('/') {
                r.error(
                    &path::key(at, "path"),
                    format!("check path `{p}` must start with `/`"),
                );
            }
            CheckKind::Http { path: p }
        }
        (None | Some("tcp"), None) => CheckKind::Tcp,
        (None | Some("tcp"), Some(_)) => {
            r.error(
                &path::key(at, "path"),
                "path is only for type = \"http\" checks",
            );
            CheckKind::Tcp
        }
        (Some(other), _) => {
            r.error(
                &path::key(at, "type"),
                format!("unknown check type `{other}` (known: \"tcp\", \"http\")"),
            );
            CheckKind::Tcp
        }
    }
}
