//! The catalog as this node knows it from etcd: every key's raw value, and what each decodes
//! to. A pure state machine: [`CatalogState::apply`] takes one change; [`CatalogState::diff`]
//! turns a full listing into the changes that lead to it (after a compacted watch or a
//! reconnect); [`CatalogState::config`] assembles the node's [`Config`].
//!
//! A value that cannot be decoded is logged and skipped: the key's raw bytes are kept (so the
//! next listing diffs right), and what it decoded to before stays in force, so one bad write
//! does not take an app down. A deleted key removes both.

use crate::keys::{Key, Keys};
use crate::values::{decode_app, InstanceValue, NodeValue};
use anyedge_config::{App, Config, Instance};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// An instance registered in etcd, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub instance: Instance,
    /// The node that registered it.
    pub node: String,
}

#[derive(Debug, Default)]
pub struct CatalogState {
    keys: Keys,
    raw: BTreeMap<Vec<u8>, Vec<u8>>,
    apps: BTreeMap<String, App>,
    /// By app, then instance id.
    instances: BTreeMap<String, BTreeMap<String, Registered>>,
    nodes: BTreeMap<String, NodeValue>,
}

impl CatalogState {
    pub fn new(keys: Keys) -> CatalogState {
        CatalogState {
            keys,
            ..CatalogState::default()
        }
    }

    /// Apply one change; returns whether what the node uses changed (a rewrite with the same
    /// bytes, or a key outside the layout, changes nothing).
    pub fn apply(&mut self, change: Change) -> bool {
        let changed = match change {
            Change::Put { key, value } => {
                if self.raw.get(&key) == Some(&value) {
                    return false;
                }
                let parsed = self.keys.parse(&key);
                self.raw.insert(key.clone(), value.clone());
                match parsed {
                    Some(k) => self.put(&key, k, &value),
                    None => false,
                }
            }
            Change::Delete { key } => {
                self.raw.remove(&key);
                match self.keys.parse(&key) {
                    Some(k) => self.delete(k),
                    None => false,
                }
            }
        };
        #[cfg(debug_assertions)]
        self.check_invariant();
        changed
    }

    fn put(&mut self, raw_key: &[u8], key: Key, value: &[u8]) -> bool {
        let shown = String::from_utf8_lossy(raw_key);
        match key {
            Key::App(name) => match decode_app(value, &name) {
                Ok((app, ignored)) => {
                    if !ignored.is_empty() {
                        tracing::debug!(key = %shown, ?ignored, "unknown fields ignored");
                    }
                    let changed = self.apps.get(&name) != Some(&app);
                    self.apps.insert(name, app);
                    changed
                }
                Err(e) => skip(&shown, &e),
            },
            Key::Instance { app, id } => match InstanceValue::decode(value, &id) {
                Ok((v, instance)) => {
                    let r = Registered {
                        instance,
                        node: v.node,
                    };
                    let by_id = self.instances.entry(app).or_default();
                    by_id.insert(id.clone(), r.clone()) != Some(r)
                }
                Err(e) => skip(&shown, &e),
            },
            Key::Node(id) => match NodeValue::decode(value, &id) {
                Ok(v) => self.nodes.insert(id, v.clone()) != Some(v),
                Err(e) => skip(&shown, &e),
            },
        }
    }

    fn delete(&mut self, key: Key) -> bool {
        match key {
            Key::App(name) => self.apps.remove(&name).is_some(),
            Key::Instance { app, id } => {
                let Some(by_id) = self.instances.get_mut(&app) else {
                    return false;
                };
                let removed = by_id.remove(&id).is_some();
                if by_id.is_empty() {
                    self.instances.remove(&app);
                }
                removed
            }
            Key::Node(id) => self.nodes.remove(&id).is_some(),
        }
    }

    /// The changes that turn this state into `listing` (every key and value under the prefix,
    /// as read at one revision): puts for new and changed values, deletes for keys gone.
    pub fn diff(&self, listing: &[(Vec<u8>, Vec<u8>)]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = BTreeSet::new();
        for (key, value) in listing {
            seen.insert(key.as_slice());
            if self.raw.get(key) != Some(value) {
                changes.push(Change::Put {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        for key in self.raw.keys() {
            if !seen.contains(key.as_slice()) {
                changes.push(Change::Delete { key: key.clone() });
            }
        }
        changes
    }

    /// The node's config: its own file sections (`base`), with the apps from etcd. Each app's
    /// instances are those registered by other nodes plus this node's own `[[instances]]`
    /// from `base` (its file is the truth for them, whether or not etcd has caught up). An
    /// instance that breaks the instance-port rule for its app, and an app whose hostnames or
    /// ports clash with an app earlier by name, are logged and left out.
    pub fn config(&self, base: &Config) -> Config {
        let me = base.node.id.as_str();
        let mut local: HashMap<&str, Vec<&Instance>> = HashMap::new();
        for li in &base.local_instances {
            local.entry(li.app.as_str()).or_default().push(&li.instance);
        }
        let peers = self.peers(me);
        // Reached over backhaul when its node advertises one and this node speaks it;
        // otherwise (a flat network) this node connects to the address itself.
        let backhaul = base.cluster.is_some();
        let via_backhaul = |node: &str| backhaul && peers.contains_key(node);
        let mut claims = claims::Claims::default();
        let mut apps = Vec::with_capacity(self.apps.len());
        for (name, app) in &self.apps {
            if let Err(why) = claims.claim(app) {
                tracing::warn!(app = %name, "app left out: {why}");
                continue;
            }
            let mine: &[&Instance] = local.get(name.as_str()).map_or(&[], Vec::as_slice);
            let mut app = app.clone();
            app.instances = self.instances_of(name, &app, mine, me, via_backhaul);
            apps.push(app);
        }
        Config {
            apps,
            peers,
            ..base.clone()
        }
    }

    /// The other nodes that advertise a backhaul address, as peers.
    fn peers(&self, me: &str) -> BTreeMap<String, anyedge_config::Peer> {
        self.nodes
            .iter()
            .filter(|(id, _)| id.as_str() != me)
            .filter_map(|(id, n)| {
                let advertise = n.advertise.clone()?;
                Some((
                    id.clone(),
                    anyedge_config::Peer {
                        region: n.region.clone(),
                        advertise,
                    },
                ))
            })
            .collect()
    }

    /// The instances of app `name`: those registered by other nodes (reached over backhaul
    /// when `via_backhaul` says so for their node), then this node's own (`mine`, from its
    /// file). An instance that breaks the instance-port rule for the app is logged and left out.
    fn instances_of(
        &self,
        name: &str,
        app: &App,
        mine: &[&Instance],
        me: &str,
        via_backhaul: impl Fn(&str) -> bool,
    ) -> Vec<Instance> {
        // An id this node runs itself is its own, whoever else registered it.
        let remote = self
            .instances
            .get(name)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| r.node != me && !mine.iter().any(|i| i.id == r.instance.id))
            .map(|r| {
                let mut i = r.instance.clone();
                if via_backhaul(&r.node) {
                    i.node = Some(r.node.clone());
                }
                i
            });
        let mine = mine.iter().map(|i| (*i).clone());
        remote
            .chain(mine)
            .filter(
                |i| match anyedge_config::rules::instance_port(name, i, &app.services) {
                    Ok(()) => true,
                    Err(why) => {
                        tracing::warn!(app = %name, instance = %i.id, "instance left out: {why}");
                        false
                    }
                },
            )
            .collect()
    }

    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }

    pub fn instances(&self) -> impl Iterator<Item = (&str, &Registered)> {
        self.instances
            .iter()
            .flat_map(|(app, m)| m.values().map(move |r| (app.as_str(), r)))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeValue> {
        self.nodes.values()
    }

    /// Every decoded entry has its raw key.
    #[cfg(debug_assertions)]
    fn check_invariant(&self) {
        for name in self.apps.keys() {
            debug_assert!(self
                .raw
                .contains_key(self.keys.key(&Key::App(name.clone())).as_bytes()));
        }
        for (app, by_id) in &self.instances {
            debug_assert!(!by_id.is_empty());
            for id in by_id.keys() {
                let key = Key::Instance {
                    app: app.clone(),
                    id: id.clone(),
                };
                debug_assert!(self.raw.contains_key(self.keys.key(&key).as_bytes()));
            }
        }
    }
}

fn skip(key: &str, e: &crate::values::DecodeError) -> bool {
    tracing::warn!(key, error = %e, "value skipped; what it held before stays in force");
    false
}

pub mod claims;

#[cfg(test)]
mod tests;
