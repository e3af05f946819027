//! The catalog as this node knows it from etcd: every key's raw value, and what each decodes
//! to. A pure state machine: [`CatalogState::apply`] takes one change; [`CatalogState::diff`]
//! turns a full listing into the changes that lead to it (after a compacted watch or a
//! reconnect); [`CatalogState::config`] assembles the node's [`Config`]. [`Change::decode`]
//! is the costly, pure half of applying a change, so a caller can do it elsewhere (the follower
//! decodes on the blocking pool) and hand the result to [`CatalogState::apply_decoded`].
//!
//! A value that cannot be decoded is logged and skipped: the key's raw bytes are kept (so the
//! next listing diffs right), and what it decoded to before stays in force, so one bad write
//! does not take an app down. A deleted key removes both.

use crate::keys::{Key, Keys};
use crate::values::{decode_app, DecodeError, InstanceValue, NodeValue};
use anyedge_config::{App, Config, Instance};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// A change with its value decoded ([`Change::decode`]). Decoding is the costly part of
/// applying a change (an app is validated by the config rules) and needs no state, so a large
/// listing is decoded off the node's control thread and then applied in a moment.
#[derive(Debug)]
pub struct Decoded {
    raw_key: Vec<u8>,
    /// `None` for a delete.
    raw_value: Option<Vec<u8>>,
    /// `None` for a key outside the layout.
    entry: Option<Entry>,
}

/// What a key of the layout holds after a change.
#[derive(Debug)]
enum Entry {
    Gone(Key),
    App(String, Result<App, DecodeError>),
    Instance(String, String, Result<Registered, DecodeError>),
    Node(String, Result<NodeValue, DecodeError>),
}

impl Change {
    /// Decode the value this change puts (pure: what [`CatalogState::apply`] costs, less the
    /// state's own bookkeeping).
    pub fn decode(self, keys: &Keys) -> Decoded {
        let (raw_key, raw_value) = match self {
            Change::Put { key, value } => (key, Some(value)),
            Change::Delete { key } => (key, None),
        };
        let entry = keys.parse(&raw_key).map(|key| match &raw_value {
            None => Entry::Gone(key),
            Some(value) => Entry::decode(key, value, &raw_key),
        });
        Decoded {
            raw_key,
            raw_value,
            entry,
        }
    }
}

impl Entry {
    fn decode(key: Key, value: &[u8], raw_key: &[u8]) -> Entry {
        match key {
            Key::App(name) => {
                let app = decode_app(value, &name).map(|(app, ignored)| {
                    if !ignored.is_empty() {
                        let key = String::from_utf8_lossy(raw_key);
                        tracing::debug!(%key, ?ignored, "unknown fields ignored");
                    }
                    app
                });
                Entry::App(name, app)
            }
            Key::Instance { app, id } => {
                let r = InstanceValue::decode(value, &id).map(|(v, instance)| Registered {
                    instance,
                    node: v.node,
                });
                Entry::Instance(app, id, r)
            }
            Key::Node(id) => {
                let v = NodeValue::decode(value, &id);
                Entry::Node(id, v)
            }
        }
    }

    #[cfg(debug_assertions)]
    fn key(&self) -> Key {
        match self {
            Entry::Gone(key) => key.clone(),
            Entry::App(name, _) => Key::App(name.clone()),
            Entry::Instance(app, id, _) => Key::Instance {
                app: app.clone(),
                id: id.clone(),
            },
            Entry::Node(id, _) => Key::Node(id.clone()),
        }
    }
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
        if let Change::Put { key, value } = &change {
            if self.raw.get(key) == Some(value) {
                return false;
            }
        }
        let decoded = change.decode(&self.keys);
        self.apply_decoded(decoded)
    }

    /// Apply one change decoded beforehand ([`Change::decode`]), as [`Self::apply`] does.
    pub fn apply_decoded(&mut self, change: Decoded) -> bool {
        let Decoded {
            raw_key,
            raw_value,
            entry,
        } = change;
        match raw_value {
            Some(value) if self.raw.get(&raw_key) == Some(&value) => return false,
            Some(value) => self.raw.insert(raw_key.clone(), value),
            None => self.raw.remove(&raw_key),
        };
        let Some(entry) = entry else {
            return false;
        };
        #[cfg(debug_assertions)]
        let key = entry.key();
        let changed = self.put(&raw_key, entry);
        #[cfg(debug_assertions)]
        self.check_invariant(&key);
        changed
    }

    fn put(&mut self, raw_key: &[u8], entry: Entry) -> bool {
        let shown = String::from_utf8_lossy(raw_key);
        match entry {
            Entry::Gone(key) => self.delete(key),
            Entry::App(name, Ok(app)) => {
                let changed = self.apps.get(&name) != Some(&app);
                self.apps.insert(name, app);
                changed
            }
            Entry::Instance(app, id, Ok(r)) => {
                let by_id = self.instances.entry(app).or_default();
                by_id.insert(id, r.clone()) != Some(r)
            }
            Entry::Node(id, Ok(v)) => self.nodes.insert(id, v.clone()) != Some(v),
            Entry::App(_, Err(e)) | Entry::Instance(_, _, Err(e)) | Entry::Node(_, Err(e)) => {
                skip(&shown, &e)
            }
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

    /// The invariant (what a key decoded to is there only with the key's raw value, and an app
    /// with instances has at least one), checked for the key one change touched: the entries of
    /// every other key are as they were, so it holds for all by induction. Checking every key
    /// at every change made loading 20,000 apps quadratic in debug builds.
    #[cfg(debug_assertions)]
    fn check_invariant(&self, key: &Key) {
        let decoded = match key {
            Key::App(name) => self.apps.contains_key(name),
            Key::Instance { app, id } => self
                .instances
                .get(app)
                .is_some_and(|by_id| by_id.contains_key(id)),
            Key::Node(id) => self.nodes.contains_key(id),
        };
        debug_assert!(!decoded || self.raw.contains_key(self.keys.key(key).as_bytes()));
        if let Key::Instance { app, .. } = key {
            debug_assert!(self
                .instances
                .get(app)
                .is_none_or(|by_id| !by_id.is_empty()));
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
