//! The work-sample JSON (`{"Apps": [{"Name", "Ports", "Targets"}]}`): every entry becomes one
//! app with one raw TCP service on its ports, and one instance per target. Everything else
//! (node, admin, limits) takes its defaults.

mod scan;

use serde::Deserialize;

use crate::de;
use crate::defaults;
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::model::{
    Acme, App, AppLimits, CatalogConfig, Concurrency, Config, Format, HttpOptions, Instance,
    Limits, Outlier, PortSpec, Service,
};
use crate::path;
use crate::report::Report;
use crate::validate::claims::{self, PortRule, PortUse};
use crate::validate::values;

#[derive(Debug, Deserialize)]
struct WorkSampleFile {
    /// Each entry is read on its own so that one bad app hides nothing in the others.
    #[serde(rename = "Apps")]
    apps: Vec<serde_json::Value>,
}

/// One entry of `Apps`; its values are typed one by one (in [`app`]) so that a value of the
/// wrong type hides nothing else.
#[derive(Debug, Deserialize)]
struct AppEntry {
    #[serde(rename = "Name")]
    name: serde_json::Value,
    #[serde(rename = "Ports")]
    ports: Vec<serde_json::Value>,
    #[serde(rename = "Targets")]
    targets: Vec<serde_json::Value>,
}

pub(crate) fn parse(text: &str, origin: &str) -> Result<Config, Diagnostics> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(Diagnostics::single(syntax_error(origin, &e))),
    };
    let (locator, repeats) = scan::scan(text);
    let mut r = Report::new(origin, text, &locator);
    for (at, offset) in repeats {
        let name = match path::segments(&at).pop() {
            Some(path::Seg::Key(k)) => k,
            _ => at.clone(),
        };
        r.error_at(&at, Some(offset), format!("duplicate key `{name}`"));
    }
    let node = defaults::node();
    let mut names = Vec::new();
    let mut ports = Vec::new();
    let mut apps = Vec::new();
    if let Some(file) = de::json_value::<WorkSampleFile>(value, "", &mut r) {
        for (i, v) in file.apps.into_iter().enumerate() {
            let at = path::index("Apps", i);
            if let Some(e) = de::json_value::<AppEntry>(v, &at, &mut r) {
                apps.push(app(&at, e, &node.region, &mut names, &mut ports, &mut r));
            }
        }
    }
    claims::unique("app name", &names, &mut r);
    claims::ports(&ports, PortRule::Exclusive, &mut r);
    if !r.is_empty() {
        return Err(r.finish());
    }
    Ok(Config {
        node,
        admin: defaults::admin(),
        catalog: CatalogConfig::File,
        limits: Limits::default(),
        http: defaults::http(),
        regions: Default::default(),
        apps: apps.into_iter().map(std::sync::Arc::new).collect(),
        cluster: None,
        acme: Acme::default(),
        local_instances: Vec::new(),
        peers: Default::default(),
        format: Format::WorkSample,
    })
}

fn syntax_error(origin: &str, e: &serde_json::Error) -> Diagnostic {
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut d = Diagnostic::new(origin, "", format!("JSON syntax: {message}"));
    if e.line() > 0 {
        d.line = Some(e.line());
        d.column = Some(e.column().max(1));
    }
    d
}

fn app(
    at: &str,
    e: AppEntry,
    region: &str,
    names: &mut Vec<(String, String)>,
    ports: &mut Vec<PortUse>,
    r: &mut Report<'_>,
) -> App {
    let name_at = path::key(at, "Name");
    let name: String = de::json_value(e.name, &name_at, r).unwrap_or_default();
    if r.check(&name_at, values::name("app name", &name)).is_some() {
        names.push((name.clone(), name_at));
    }
    App {
        hostnames: Vec::new(),
        // The work sample predates per-instance and per-app limits: only node-wide caps apply.
        concurrency: Concurrency::UNLIMITED,
        limits: AppLimits::UNLIMITED,
        outlier: Outlier::default(),
        access: None,
        rate_limit: None,
        retry_budget: Default::default(),
        on_demand: Default::default(),
        tokens_sha256: Vec::new(),
        replay_from: Vec::new(),
        services: vec![Service {
            internal_port: None,
            force_https: false,
            http_options: HttpOptions::default(),
            tcp_options: Default::default(),
            access: None,
            ports: port_specs(&path::key(at, "Ports"), e.ports, &name, ports, r),
            checks: Vec::new(),
        }],
        certificates: Vec::new(),
        instances: targets(&path::key(at, "Targets"), e.targets, &name, region, r),
        name,
    }
}

/// `Ports`: raw TCP ports on every address, each also recorded in `uses`.
fn port_specs(
    at: &str,
    list: Vec<serde_json::Value>,
    app: &str,
    uses: &mut Vec<PortUse>,
    r: &mut Report<'_>,
) -> Vec<PortSpec> {
    if list.is_empty() {
        r.error(at, "an app needs at least one port");
    }
    let mut specs = Vec::new();
    for (j, p) in list.into_iter().enumerate() {
        let pat = path::index(at, j);
        let Some(port) = de::json_value::<i64>(p, &pat, r) else {
            continue;
        };
        let Some(port) = r.check(&pat, values::port(port)) else {
            continue;
        };
        uses.push(PortUse {
            app: app.to_string(),
            path: pat,
            port,
            bind: None,
            handlers: Vec::new(),
            proxy_proto: None,
        });
        specs.push(PortSpec {
            port,
            bind: None,
            handlers: Vec::new(),
            proxy_proto: None,
        });
    }
    specs
}

/// `Targets`: one instance per `host:port`, its id the target as written.
fn targets(
    at: &str,
    list: Vec<serde_json::Value>,
    app: &str,
    region: &str,
    r: &mut Report<'_>,
) -> Vec<Instance> {
    if list.is_empty() {
        r.error(at, "an app needs at least one target (host:port)");
    }
    let mut instances: Vec<Instance> = Vec::new();
    for (k, t) in list.into_iter().enumerate() {
        let tat = path::index(at, k);
        let Some(t) = de::json_value::<String>(t, &tat, r) else {
            continue;
        };
        let Some(address) = r.check(&tat, values::host_port(&t, true)) else {
            continue;
        };
        if instances.iter().any(|i| i.id == t) {
            r.error(&tat, format!("target `{t}` is listed twice in app `{app}`"));
            continue;
        }
        instances.push(Instance {
            id: t,
            region: region.to_string(),
            address,
            node: None,
            driver: None,
        });
    }
    instances
}
