//! anyedge TOML: syntax (toml_edit, which keeps spans), then one block at a time into the file
//! structs of `toml/file.rs`, then validation into the internal [`Config`].

mod apps;
mod file;
mod instances;
pub(crate) mod locate;
mod on_demand;
mod outlier;
mod policy;
mod sections;
mod services;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use toml_edit::{Document, Item, Table, Value};

use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::model::{Acme, App, CatalogConfig, Config, Format, Node, Peer};
use crate::path;
use crate::report::{line_col, Report};
use locate::TomlLocator;

/// Top-level keys of a node file.
const SECTIONS: [&str; 11] = [
    "node",
    "admin",
    "catalog",
    "limits",
    "cluster",
    "acme",
    "http",
    "regions",
    "apps",
    "instances",
    "nodes",
];

/// Parse and validate a node's config file.
pub(crate) fn parse(text: &str, origin: &str, base: Option<&Path>) -> Result<Config, Diagnostics> {
    with_document(text, origin, |root, r| {
        unknown_sections(root, r);
        let node = sections::node(root, base, r);
        let catalog = sections::catalog(root, base, r);
        let etcd = matches!(catalog, CatalogConfig::Etcd(_));
        let cluster = sections::cluster(root, base, r);
        let peers = nodes(root, etcd, &node.id, r);
        // A `[cluster]` section that is there but invalid is already reported.
        if cluster.is_none() && !root.contains_key("cluster") {
            without_cluster(&node, &peers, r);
        }
        let scope = apps::Scope {
            node_region: &node.region,
            base,
            instances_allowed: true,
            nodes: Some((&node.id, &peers)),
        };
        let apps = file_apps(root, etcd, &scope, r);
        let acme = sections::acme(root, base, r);
        check_acme_secret(&catalog, &acme, r);
        Config {
            admin: sections::admin(root, r),
            limits: sections::limits(root, r),
            http: sections::http(root, r),
            regions: sections::regions(root, r),
            cluster,
            peers,
            acme,
            local_instances: instances::local(root.get("instances"), &node.region, etcd, r),
            node,
            catalog,
            apps: apps.into_iter().map(Arc::new).collect(),
            format: Format::Toml,
        }
    })
}

/// Every top-level key of a node file is one of [`SECTIONS`].
fn unknown_sections(root: &Table, r: &mut Report<'_>) {
    for (k, _) in root.iter() {
        if !SECTIONS.contains(&k) {
            r.key_error(&path::key("", k), format!("unknown section `{k}`"));
        }
    }
}

/// `[[nodes]]`, which a node file on the etcd store must not have: nodes register themselves.
fn nodes(root: &Table, etcd: bool, me: &str, r: &mut Report<'_>) -> BTreeMap<String, Peer> {
    match root.get("nodes") {
        Some(_) if etcd => {
            r.key_error(
                "nodes",
                "[[nodes]] do not belong in a node file with store = \"etcd\": nodes register themselves",
            );
            Default::default()
        }
        item => instances::peers(item, me, r),
    }
}

/// A node file without `[cluster]` has nothing that needs it: no `[[nodes]]`, no
/// `backhaul_listen`.
fn without_cluster(node: &Node, peers: &BTreeMap<String, Peer>, r: &mut Report<'_>) {
    if !peers.is_empty() {
        r.key_error(
            "nodes",
            "[[nodes]] need [cluster] (mutual TLS between nodes)",
        );
    }
    if node.backhaul_listen.is_some() {
        r.error(
            "node.backhaul_listen",
            "backhaul_listen needs [cluster] (mutual TLS between nodes)",
        );
    }
}

/// `[[apps]]`, which a node file on the etcd store must not have: apps live in etcd.
fn file_apps(root: &Table, etcd: bool, scope: &apps::Scope<'_>, r: &mut Report<'_>) -> Vec<App> {
    match root.get("apps") {
        Some(_) if etcd => {
            r.key_error(
                "apps",
                "[[apps]] do not belong in a node file with store = \"etcd\": apps live in etcd (`anyedge apps put FILE`)",
            );
            Vec::new()
        }
        item => apps::apps(item, scope, r),
    }
}

/// `[acme]` on the etcd store keeps private keys in etcd, sealed with the cluster secret key:
/// `[catalog] secret_key_file` is required.
fn check_acme_secret(catalog: &CatalogConfig, acme: &Acme, r: &mut Report<'_>) {
    if let CatalogConfig::Etcd(cfg) = catalog {
        if acme.enabled && cfg.secret_key_file.is_none() {
            r.error(
                "catalog.store",
                "[acme] with store = \"etcd\" keeps private keys in etcd, sealed with the cluster secret key: set secret_key_file (32 bytes, e.g. `anyedge certs secret-key --out FILE`)",
            );
        }
    }
}

/// Parse and validate a file of `[[apps]]` blocks alone (`anyedge apps put`): no other section,
/// no instances (workers register their own).
pub(crate) fn parse_apps(
    text: &str,
    origin: &str,
    base: Option<&Path>,
) -> Result<Vec<App>, Diagnostics> {
    with_document(text, origin, |root, r| {
        for (k, _) in root.iter() {
            if k != "apps" {
                r.key_error(
                    &path::key("", k),
                    format!("unknown section `{k}`: an apps file holds only [[apps]] blocks"),
                );
            }
        }
        let scope = apps::Scope {
            node_region: crate::defaults::REGION,
            base,
            instances_allowed: false,
            nodes: None,
        };
        apps::apps(root.get("apps"), &scope, r)
    })
}

/// Like [`parse_apps`], but unknown keys (written by a newer version) are passed over and
/// returned as key paths instead of being problems: the decoding of app values kept in etcd.
pub(crate) fn parse_apps_lenient(
    text: &str,
    origin: &str,
) -> Result<(Vec<App>, Vec<String>), Diagnostics> {
    with_report(text, origin, true, |root, r| {
        let scope = apps::Scope {
            node_region: crate::defaults::REGION,
            base: None,
            instances_allowed: false,
            nodes: None,
        };
        apps::apps(root.get("apps"), &scope, r)
    })
}

/// Parse the syntax, run `build` with a report that can place every key path, and return its
/// result only if nothing was reported.
fn with_document<T>(
    text: &str,
    origin: &str,
    build: impl FnOnce(&Table, &mut Report<'_>) -> T,
) -> Result<T, Diagnostics> {
    with_report(text, origin, false, build).map(|(v, _)| v)
}

/// [`with_document`], optionally lenient about unknown keys (returned beside the result).
fn with_report<T>(
    text: &str,
    origin: &str,
    lenient: bool,
    build: impl FnOnce(&Table, &mut Report<'_>) -> T,
) -> Result<(T, Vec<String>), Diagnostics> {
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let mut d = Diagnostic::new(origin, "", format!("TOML syntax: {}", e.message().trim()));
            if let Some(span) = e.span() {
                let (line, column) = line_col(text, span.start);
                d.line = Some(line);
                d.column = Some(column);
            }
            return Err(Diagnostics::single(d));
        }
    };
    let locator = TomlLocator {
        root: doc.as_table(),
    };
    let mut report = Report::new(origin, text, &locator);
    if lenient {
        report = report.lenient();
    }
    let value = build(doc.as_table(), &mut report);
    if report.is_empty() {
        Ok((value, report.ignored()))
    } else {
        Err(report.finish())
    }
}

/// A table-like item as an owned table (`[x]`, `[[x]]` elements and `{ inline }` tables).
fn as_table(item: Item, at: &str, r: &mut Report<'_>) -> Option<Table> {
    match item {
        Item::Table(t) => Some(t),
        Item::Value(Value::InlineTable(t)) => Some(t.into_table()),
        _ => {
            r.error(at, "expected a table");
            None
        }
    }
}

/// The elements of a list of tables (`[[key]]` blocks or `key = [{ .. }, { .. }]`), each as
/// its own item. `at` is the list's path.
fn list(item: Option<Item>, at: &str, r: &mut Report<'_>) -> Vec<Item> {
    match item {
        None => Vec::new(),
        Some(Item::ArrayOfTables(a)) => a.into_iter().map(Item::Table).collect(),
        Some(Item::Value(Value::Array(a))) => a.into_iter().map(Item::Value).collect(),
        Some(_) => {
            let name = at.rsplit('.').next().unwrap_or(at);
            r.error(
                at,
                format!(
                    "`{name}` must be a list of tables ([[...]] blocks, or {name} = [{{ .. }}])"
                ),
            );
            Vec::new()
        }
    }
}
