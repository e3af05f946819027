//! Instances: `[[apps.instances]]` (file store) and top-level `[[instances]]` (the instances a
//! worker runs for apps kept in etcd).
//!
//! The port rule: an instance's address may name a port only when its app has at most one
//! service (the port then overrides that service's `internal_port`). With two or more services
//! a port in the address would be ambiguous, so each service reaches the instance on its own
//! `internal_port`. An instance without a port needs every service to have an `internal_port`.

use toml_edit::Item;

use super::file::{InstanceFile, LocalInstanceFile};
use super::list;
use crate::de;
use crate::model::{Instance, LocalInstance, Service};
use crate::path;
use crate::report::Report;
use crate::validate::claims;
use crate::validate::values;

/// The instances of the app `name` at `app_at`, checked against its `services`.
pub(super) fn of_app(
    app_at: &str,
    name: &str,
    items: Vec<Item>,
    services: &[Service],
    scope: &super::apps::Scope<'_>,
    r: &mut Report<'_>,
) -> Vec<Instance> {
    let node_region = scope.node_region;
    let mut ids = Vec::new();
    let mut out = Vec::new();
    for (j, item) in items.into_iter().enumerate() {
        let at = path::index(&path::key(app_at, "instances"), j);
        let Some(f) = de::toml_item::<InstanceFile>(&item, &at, r) else {
            continue;
        };
        ids.push((f.id.clone(), path::key(&at, "id")));
        let Some(mut instance) = instance(&at, f.id, f.region, &f.address, node_region, r) else {
            continue;
        };
        instance.driver = f
            .driver
            .as_ref()
            .and_then(|d| super::on_demand::driver(d, &path::key(&at, "driver"), r));
        if let Some(node) = f.node {
            let at = path::key(&at, "node");
            match scope.nodes {
                // Naming this node is the same as naming none.
                Some((me, _)) if node == me => {}
                Some((_, peers)) if peers.contains_key(&node) => instance.node = Some(node),
                _ => r.error(
                    &at,
                    format!(
                        "unknown node `{node}`: list it under [[nodes]] (id, region, advertise)"
                    ),
                ),
            }
        }
        port_rule(&at, name, &instance, services, r);
        out.push(instance);
    }
    claims::unique("instance id", &ids, r);
    out
}

/// Top-level `[[instances]]`, allowed only with the etcd store.
pub(super) fn local(
    item: Option<&Item>,
    node_region: &str,
    etcd: bool,
    r: &mut Report<'_>,
) -> Vec<LocalInstance> {
    if item.is_some() && !etcd {
        r.key_error(
            "instances",
            "top-level [[instances]] are for store = \"etcd\"; with the file store, list instances under their app as [[apps.instances]]",
        );
        return Vec::new();
    }
    let mut ids = Vec::new();
    let mut out = Vec::new();
    for (j, item) in list(item.cloned(), "instances", r).into_iter().enumerate() {
        let at = path::index("instances", j);
        let Some(f) = de::toml_item::<LocalInstanceFile>(&item, &at, r) else {
            continue;
        };
        r.check(&path::key(&at, "app"), values::name("app name", &f.app));
        ids.push((format!("{}/{}", f.app, f.id), path::key(&at, "id")));
        let Some(mut instance) = instance(&at, f.id, None, &f.address, node_region, r) else {
            continue;
        };
        instance.driver = f
            .driver
            .as_ref()
            .and_then(|d| super::on_demand::driver(d, &path::key(&at, "driver"), r));
        out.push(LocalInstance {
            app: f.app,
            instance,
        });
    }
    claims::unique("instance (app/id)", &ids, r);
    out
}

fn instance(
    at: &str,
    id: String,
    region: Option<String>,
    address: &str,
    node_region: &str,
    r: &mut Report<'_>,
) -> Option<Instance> {
    r.check(&path::key(at, "id"), values::name("instance id", &id));
    if let Some(region) = &region {
        r.check(
            &path::key(at, "region"),
            values::name("region name", region),
        );
    }
    let address = r.check(&path::key(at, "address"), values::host_port(address, false))?;
    Some(Instance {
        id,
        region: region.unwrap_or_else(|| node_region.to_string()),
        address,
        node: None,
        driver: None,
    })
}

/// See the module comment.
fn port_rule(at: &str, app: &str, instance: &Instance, services: &[Service], r: &mut Report<'_>) {
    r.check(
        &path::key(at, "address"),
        crate::rules::instance_port(app, instance, services),
    );
}

/// `[[nodes]]`: the other nodes a file-configured cluster's instances may name.
pub(super) fn peers(
    item: Option<&Item>,
    me: &str,
    r: &mut Report<'_>,
) -> std::collections::BTreeMap<String, crate::model::Peer> {
    let mut out = std::collections::BTreeMap::new();
    let mut ids = Vec::new();
    for (j, item) in list(item.cloned(), "nodes", r).into_iter().enumerate() {
        let at = path::index("nodes", j);
        let Some(f) = de::toml_item::<super::file::PeerFile>(&item, &at, r) else {
            continue;
        };
        r.check(&path::key(&at, "id"), values::name("node id", &f.id));
        if let Some(region) = &f.region {
            r.check(
                &path::key(&at, "region"),
                values::name("region name", region),
            );
        }
        let ok = r
            .check(
                &path::key(&at, "advertise"),
                values::host_port(&f.advertise, true),
            )
            .is_some();
        if f.id == me {
            r.error(
                &path::key(&at, "id"),
                format!("`{me}` is this node ([node] id): [[nodes]] lists the others"),
            );
            continue;
        }
        ids.push((f.id.clone(), path::key(&at, "id")));
        if ok {
            let region = f
                .region
                .unwrap_or_else(|| crate::defaults::REGION.to_string());
            out.insert(
                f.id,
                crate::model::Peer {
                    region,
                    advertise: f.advertise,
                },
            );
        }
    }
    claims::unique("node id", &ids, r);
    out
}
