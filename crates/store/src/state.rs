//! The catalog as this node knows it from etcd: every key's value (as a digest), and what each
//! decodes to. A pure state machine: [`CatalogState::apply`] takes one change; [`CatalogState::diff`]
//! turns a full listing into the changes that lead to it (after a compacted watch or a
//! reconnect); [`CatalogState::config`] assembles the node's [`Config`]. [`Change::decode`]
//! is the costly, pure half of applying a change, so a caller can do it elsewhere (the follower
//! decodes on the blocking pool) and hand the result to [`CatalogState::apply_decoded`].
//!
//! What a change is worth to this node depends on who the node is ([`Viewer`]): a node's record
//! (`nodes/<id>`) matters only to a node that routes to instances that node runs, and another
//! node's instances only to a node that routes client traffic (the edge role). A change that
//! concerns the node is reported by `apply` (the node then reloads); any other is kept in the
//! state without a word, so node churn costs the nodes that do not route to the churning node
//! nothing (`docs/cluster.md`, "Node churn").
//!
//! A value that cannot be decoded is logged and skipped: the key's digest is kept (so the
//! next listing diffs right), and what it decoded to before stays in force, so one bad write
//! does not take an app down. A deleted key removes both.

use crate::keys::{Key, Keys};
use crate::values::{decode_app, DecodeError, InstanceValue, NodeValue};
use anyedge_config::{App, Apps, Config, Instance};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// A value's SHA-256: equal digests, equal values.
type Digest = [u8; 32];

fn digest(value: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(value).into()
}

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
    /// The value's digest; `None` for a delete.
    raw_value: Option<Digest>,
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
            raw_value: raw_value.as_deref().map(digest),
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

/// Who reads the catalog: what of another node's churn concerns this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// This node's id: the instances it registered itself come from its file, not from etcd.
    pub node: String,
    /// Whether the node routes client traffic (the edge role): only then are other nodes'
    /// instances part of its config. A worker-only node serves its own instances alone.
    pub routes: bool,
    /// Whether the node reaches other nodes' instances over backhaul (`[cluster]`): only then
    /// is a node's record (its backhaul address) part of its config.
    pub backhaul: bool,
}

impl Viewer {
    /// The viewer a node's file `base` makes.
    pub fn of(base: &Config) -> Viewer {
        Viewer {
            node: base.node.id.clone(),
            routes: base.node.roles.edge,
            backhaul: base.cluster.is_some(),
        }
    }

    /// Whether an instance registered by `node` is routed by this viewer (as a remote one).
    fn routes_to(&self, node: &str) -> bool {
        self.routes && node != self.node
    }
}

#[derive(Debug, Default)]
pub struct CatalogState {
    keys: Keys,
    /// `None`: every change concerns the reader (a CLI listing, tests).
    viewer: Option<Viewer>,
    /// Every key's value as a digest: what a rewrite and a relist compare against. The bytes
    /// themselves are decoded and dropped (kept, they were about 150 bytes per instance key).
    raw: BTreeMap<Vec<u8>, Digest>,
    apps: BTreeMap<String, App>,
    /// By app, then instance id.
    instances: BTreeMap<String, BTreeMap<String, Registered>>,
    /// How many instances each node registered (of any app): a node's record concerns a
    /// viewer only while it runs instances.
    registered_by: HashMap<String, usize>,
    nodes: BTreeMap<String, NodeValue>,
    /// Each app as [`Self::config`] last assembled it (the etcd app with its instances), kept
    /// until a change to the app, one of its instances or any node record, or another file
    /// (`base`), so assembling the config after one change builds that app alone.
    assembled: Mutex<Assembled>,
    /// Instances and nodes that left lately: the grace rule's input ([`grace`]).
    departed: grace::Departed,
}

#[derive(Debug, Default)]
struct Assembled {
    /// What the apps were assembled for: the file's own instances and the viewer.
    context: Option<(Vec<anyedge_config::LocalInstance>, Viewer)>,
    /// The apps as last handed over, in name order (the apps left out not among them); `None`:
    /// none yet, or the context changed. Shared with the configs handed over ([`Apps`]: a copy
    /// shares its chunks), so the next assembly copies the chunks it changes and no other.
    apps: Option<Apps>,
    /// The apps whose key or instances changed since (or that a node's record concerns): the
    /// next assembly builds these alone.
    dirty: HashSet<String>,
    /// The apps assembled last time with instances the grace rule kept: built again each time
    /// (grace ends by time and by the load feeds, not by a change in etcd).
    graced: HashSet<String>,
    /// The apps the claims across apps leave out, as of the apps last checked.
    left_out: HashSet<String>,
    /// Whether an app came, went or changed since the claims were checked. Claims read the
    /// apps' hostnames and ports alone, so an instance or node change does not check them again.
    claims_stale: bool,
}

impl CatalogState {
    pub fn new(keys: Keys) -> CatalogState {
        CatalogState {
            keys,
            ..CatalogState::default()
        }
    }

    /// A state that reports only the changes that concern `viewer` (see [`Self::apply`]).
    pub fn for_viewer(keys: Keys, viewer: Viewer) -> CatalogState {
        CatalogState {
            keys,
            viewer: Some(viewer),
            ..CatalogState::default()
        }
    }

    /// The node's file changed: judge the changes from now on for `viewer`.
    pub fn set_viewer(&mut self, viewer: Viewer) {
        self.viewer = Some(viewer);
    }

    /// Apply one change; returns whether it concerns the node: whether the node's config
    /// ([`Self::config`]) may have changed. A rewrite with the same bytes, a key outside the
    /// layout, and (with a [`Viewer`]) a change to what the node does not route to change
    /// nothing. Never `false` for a change that changes the config (tested by simulation).
    pub fn apply(&mut self, change: Change) -> bool {
        if let Change::Put { key, value } = &change {
            if self.raw.get(key) == Some(&digest(value)) {
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
        self.forget_assembled(&entry);
        match entry {
            Entry::Gone(key) => self.delete(key),
            Entry::App(name, Ok(app)) => {
                let changed = self.apps.get(&name) != Some(&app);
                self.apps.insert(name, app);
                changed
            }
            Entry::Instance(app, id, Ok(r)) => {
                self.departed.instance_back(&app, &id);
                let old = self.set_instance(&app, id, Some(r.clone()));
                old.as_ref() != Some(&r)
                    && (self.instance_concerns(&app, Some(&r))
                        || self.instance_concerns(&app, old.as_ref()))
            }
            Entry::Node(id, Ok(v)) => {
                self.departed.node_back(&id, Instant::now());
                let old = self.nodes.insert(id.clone(), v.clone());
                old.as_ref() != Some(&v) && self.node_concerns(&id, old.as_ref(), Some(&v))
            }
            Entry::App(_, Err(e)) | Entry::Instance(_, _, Err(e)) | Entry::Node(_, Err(e)) => {
                skip(&shown, &e)
            }
        }
    }

    /// What a change to `entry`'s key makes stale among the assembled apps.
    fn forget_assembled(&mut self, entry: &Entry) {
        let assembled = self
            .assembled
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        match entry {
            Entry::App(app, _) | Entry::Gone(Key::App(app)) => {
                assembled.dirty.insert(app.clone());
                assembled.claims_stale = true;
            }
            Entry::Instance(app, _, _) | Entry::Gone(Key::Instance { app, .. }) => {
                assembled.dirty.insert(app.clone());
            }
            Entry::Node(id, value) => {
                // An app's assembly reads a node record only for whether the node advertises
                // a backhaul address (its instances are reached over it): only a change to
                // that, and only the apps with instances the node registered. (Clearing every
                // app here made every app a new `Arc` after a node's own registration, so
                // each later change compared every app in full in `Snapshot::build`.)
                let advertise = |v: &NodeValue| v.advertise.is_some();
                let now = value.as_ref().ok().map(advertise);
                let before = self.nodes.get(id).map(advertise);
                if value.is_ok() && now != before {
                    forget_apps_on(&mut assembled.dirty, &self.instances, id);
                }
            }
            Entry::Gone(Key::Node(id)) => {
                if self.nodes.contains_key(id) {
                    forget_apps_on(&mut assembled.dirty, &self.instances, id);
                }
            }
        }
    }

    fn delete(&mut self, key: Key) -> bool {
        match key {
            Key::App(name) => self.apps.remove(&name).is_some(),
            Key::Instance { app, id } => {
                let old = self.set_instance(&app, id, None);
                let concerns = self.instance_concerns(&app, old.as_ref());
                if let Some(r) = old {
                    self.departed.instance_gone(&app, r, Instant::now());
                }
                concerns
            }
            Key::Node(id) => {
                let old = self.nodes.remove(&id);
                let concerns = old.is_some() && self.node_concerns(&id, old.as_ref(), None);
                if let Some(v) = old {
                    self.departed.node_gone(v, Instant::now());
                }
                concerns
            }
        }
    }

    /// Put (`Some`) or remove (`None`) one instance, keeping the count by node; returns what
    /// was there.
    fn set_instance(&mut self, app: &str, id: String, r: Option<Registered>) -> Option<Registered> {
        let added = r.as_ref().map(|r| r.node.clone());
        let old = match r {
            Some(r) => self
                .instances
                .entry(app.to_string())
                .or_default()
                .insert(id, r),
            None => {
                let by_id = self.instances.get_mut(app)?;
                let old = by_id.remove(&id);
                if by_id.is_empty() {
                    self.instances.remove(app);
                }
                old
            }
        };
        if let Some(node) = added {
            *self.registered_by.entry(node).or_default() += 1;
        }
        if let Some(gone) = &old {
            if let Some(n) = self.registered_by.get_mut(&gone.node) {
                *n -= 1;
                if *n == 0 {
                    self.registered_by.remove(&gone.node);
                }
            }
        }
        old
    }

    /// Whether an instance of `app` (as it was or is now; `None`: none) is in the node's config.
    fn instance_concerns(&self, app: &str, r: Option<&Registered>) -> bool {
        let Some(r) = r else { return false };
        let routed = self.viewer.as_ref().is_none_or(|v| v.routes_to(&r.node));
        routed && self.apps.contains_key(app)
    }

    /// Whether a change of node `id`'s record from `old` to `new` concerns the node: it
    /// routes to instances that node runs, over backhaul, and where the node is reached changed.
    fn node_concerns(&self, id: &str, old: Option<&NodeValue>, new: Option<&NodeValue>) -> bool {
        let Some(viewer) = &self.viewer else {
            return true;
        };
        viewer.backhaul
            && viewer.routes_to(id)
            && self.registered_by.contains_key(id)
            && old.and_then(peer_of) != new.and_then(peer_of)
    }

    /// The changes that turn this state into `listing` (every key and value under the prefix,
    /// as read at one revision): puts for new and changed values, deletes for keys gone.
    pub fn diff(&self, listing: &[(Vec<u8>, Vec<u8>)]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = BTreeSet::new();
        for (key, value) in listing {
            seen.insert(key.as_slice());
            if self.raw.get(key) != Some(&digest(value)) {
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
    /// instances are those registered by other nodes (on a node that routes: the edge role)
    /// plus this node's own `[[instances]]` from `base` (its file is the truth for them,
    /// whether or not etcd has caught up). Its peers are the nodes those instances are reached
    /// on over backhaul, and no others. An instance that breaks the instance-port rule for its
    /// app, and an app whose hostnames or ports clash with an app earlier by name, are logged
    /// and left out.
    pub fn config(&self, base: &Config) -> Config {
        self.config_graced(base, Instant::now(), &|_, _| false)
    }

    /// [`Self::config`], with the instances lost with their node's lease that the grace rule
    /// keeps at `now` ([`grace`]; `reports` says what the workers' load feeds report).
    pub fn config_graced(
        &self,
        base: &Config,
        now: Instant,
        reports: grace::Reports<'_>,
    ) -> Config {
        let mut local: HashMap<&str, Vec<&Instance>> = HashMap::new();
        for li in &base.local_instances {
            local.entry(li.app.as_str()).or_default().push(&li.instance);
        }
        let viewer = Viewer::of(base);
        // Reached over backhaul when its node advertises one and this node speaks it;
        // otherwise (a flat network) this node connects to the address itself.
        let via_backhaul = |node: &str| {
            viewer.backhaul && self.nodes.get(node).is_some_and(|n| n.advertise.is_some())
        };
        let mut assembled = self
            .assembled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let assembled = &mut *assembled;
        let context = (base.local_instances.clone(), viewer.clone());
        if assembled.context.as_ref() != Some(&context) {
            assembled.apps = None;
            assembled.context = Some(context);
        }
        let may_grace = viewer.backhaul && !self.departed.is_empty();
        let build = |name: &str, app: &App, graced: &mut HashSet<String>| {
            let graceable = may_grace && self.departed.mentions(name);
            let mine: &[&Instance] = local.get(name).map_or(&[], Vec::as_slice);
            let mut app = app.clone();
            app.instances = self.instances_of(name, &app, mine, &viewer, via_backhaul);
            if graceable && self.add_graced(&mut app, &viewer, now, reports) {
                graced.insert(name.to_string());
            }
            Arc::new(app)
        };
        let stale = assembled.claims_stale || assembled.apps.is_none();
        if stale {
            let left_out = self.left_out();
            // The apps the claims leave out now, or no longer, are assembled again.
            let flipped = left_out.symmetric_difference(&assembled.left_out).cloned();
            assembled.dirty.extend(flipped.collect::<Vec<_>>());
            assembled.left_out = left_out;
            assembled.claims_stale = false;
        }
        let left_out = &assembled.left_out;
        let mut graced = HashSet::new();
        let apps = match assembled.apps.take() {
            // Every app, in name order.
            None => self
                .apps
                .iter()
                .filter(|(name, _)| !left_out.contains(*name))
                .map(|(name, app)| build(name, app, &mut graced))
                .collect(),
            // The apps changed since, and those in grace then or now, put in by name.
            Some(mut apps) => {
                let mut names = std::mem::take(&mut assembled.dirty);
                names.extend(assembled.graced.drain());
                if may_grace {
                    let graces = |a: &&str| !self.departed.graced(Some(a), now, reports).is_empty();
                    names.extend(self.departed.apps().filter(graces).map(str::to_string));
                }
                for name in &names {
                    let app = self.apps.get(name).filter(|_| !left_out.contains(name));
                    match (apps.search_by_name(name), app) {
                        (Ok(at), Some(app)) => apps[at] = build(name, app, &mut graced),
                        (Ok(at), None) => drop(apps.remove(at)),
                        (Err(at), Some(app)) => apps.insert(at, build(name, app, &mut graced)),
                        (Err(_), None) => {}
                    }
                }
                apps
            }
        };
        assembled.dirty.clear();
        assembled.graced = graced;
        assembled.apps = Some(apps.clone());
        // Without backhaul no instance names a node (none is reached over it, none is graced)
        // unless the file's own does: then no walk over every instance for the peers.
        let named = viewer.backhaul
            || base
                .local_instances
                .iter()
                .any(|l| l.instance.node.is_some());
        let peers = match named {
            true => self.peers(&apps),
            false => BTreeMap::new(),
        };
        Config {
            apps,
            peers,
            ..base.clone()
        }
    }

    /// The apps whose hostnames or ports clash with an app earlier by name (logged).
    fn left_out(&self) -> HashSet<String> {
        let mut claims = claims::Claims::default();
        let mut out = HashSet::new();
        for (name, app) in &self.apps {
            if let Err(why) = claims.claim(app) {
                tracing::warn!(app = %name, "app left out: {why}");
                out.insert(name.clone());
            }
        }
        out
    }

    /// The nodes the config's instances are reached on, as peers: the backhaul peer set is
    /// what the node routes to, so another node joining or leaving changes it only when the
    /// node routes to its instances.
    fn peers(&self, apps: &Apps) -> BTreeMap<String, anyedge_config::Peer> {
        apps.iter()
            .flat_map(|a| &a.instances)
            .filter_map(|i| i.node.as_deref())
            .filter_map(|id| {
                let node = self.nodes.get(id).or_else(|| self.departed.node(id))?;
                Some((id.to_string(), peer_of(node)?))
            })
            .collect()
    }

    /// Add to `app` the instances the grace rule keeps ([`grace`]), in id order among the
    /// others, reached over backhaul on the node they were lost with; whether any was.
    fn add_graced(
        &self,
        app: &mut App,
        viewer: &Viewer,
        now: Instant,
        reports: grace::Reports<'_>,
    ) -> bool {
        let graced = self.departed.graced(Some(&app.name), now, reports);
        let mut added = false;
        for g in graced {
            let id = &g.registered.instance.id;
            let taken = app.instances.iter().any(|i| i.id == *id);
            if taken || !viewer.routes_to(&g.registered.node) || g.node.advertise.is_none() {
                continue;
            }
            if anyedge_config::rules::instance_port(
                &app.name,
                &g.registered.instance,
                &app.services,
            )
            .is_err()
            {
                continue;
            }
            let mut i = g.registered.instance.clone();
            i.node = Some(g.registered.node.clone());
            app.instances.push(i);
            added = true;
        }
        if added {
            app.instances.sort_by(|a, b| a.id.cmp(&b.id));
        }
        added
    }

    /// The instances the grace rule keeps at `now`, as `<app>/<id>` (every app, whatever the
    /// viewer): what a node compares to know when its config must be built again.
    pub fn graced(&self, now: Instant, reports: grace::Reports<'_>) -> Vec<String> {
        self.departed
            .graced(None, now, reports)
            .into_iter()
            .filter(|g| self.apps.contains_key(g.app))
            .map(|g| format!("{}/{}", g.app, g.registered.instance.id))
            .collect()
    }

    /// The changes applied from now on came together: one watch response, or the diff of one
    /// listing (the grace rule keeps only instances that left in the same batch as their node).
    pub fn next_batch(&mut self) {
        self.departed.next_batch();
    }

    /// Whether an instance left less than [`grace::GRACE`] before `now` (the grace rule may
    /// keep it).
    pub fn has_departed(&self, now: Instant) -> bool {
        self.departed.any_fresh(now)
    }

    /// The instances of app `name`: those registered by other nodes when the node routes
    /// (reached over backhaul when `via_backhaul` says so for their node), then this node's own
    /// (`mine`, from its file). An instance that breaks the instance-port rule for the app is
    /// logged and left out.
    fn instances_of(
        &self,
        name: &str,
        app: &App,
        mine: &[&Instance],
        viewer: &Viewer,
        via_backhaul: impl Fn(&str) -> bool,
    ) -> Vec<Instance> {
        // An id this node runs itself is its own, whoever else registered it.
        let remote = self
            .instances
            .get(name)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| viewer.routes_to(&r.node) && !mine.iter().any(|i| i.id == r.instance.id))
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

/// What a node's record gives the nodes that route to it: a backhaul peer, when it advertises
/// an address.
/// Mark for assembly again the apps with an instance registered by `node`.
fn forget_apps_on(
    dirty: &mut HashSet<String>,
    instances: &BTreeMap<String, BTreeMap<String, Registered>>,
    node: &str,
) {
    for (app, registered) in instances {
        if registered.values().any(|r| r.node == node) {
            dirty.insert(app.clone());
        }
    }
}

fn peer_of(v: &NodeValue) -> Option<anyedge_config::Peer> {
    Some(anyedge_config::Peer {
        region: v.region.clone(),
        advertise: v.advertise.clone()?,
    })
}

fn skip(key: &str, e: &crate::values::DecodeError) -> bool {
    tracing::warn!(key, error = %e, "value skipped; what it held before stays in force");
    false
}

pub mod claims;
pub mod grace;

#[cfg(test)]
mod tests;
