//! An immutable picture of every app and instance, shared by `Arc` and swapped whole.

use crate::live::{AppLive, InstanceLive, LiveRegistry, PeerLive};
use crate::shards::Shards;
use anyedge_config::{App, Config, HostPort};
use anyedge_core::InstanceId;
use std::collections::{HashMap, HashSet};
#[cfg(test)]
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One generation of the catalog.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    /// Sharded: the next snapshot copies the shards it does not change ([`Shards`]).
    pub apps: Shards<Arc<AppEntry>>,
    /// How many of its apps this generation built afresh; the others are the previous
    /// generation's entries, shared. A change to one app rebuilds one (tested).
    pub rebuilt: usize,
    /// The live state of instances that moved in this generation (another address or backhaul
    /// address under the same id): whoever puts the snapshot in force clears their connect
    /// backoff once requests route by it ([`AppEntry::moved_since`]).
    pub moved: Vec<Arc<InstanceLive>>,
    /// Which apps differ from the snapshot this one was built on (`None`: built without one),
    /// so that what is derived from the apps (the routes) can be updated by the diff.
    pub diff: Option<AppsDiff>,
    /// How many of its apps configure static certificates (`certificates`), counted by the
    /// diff: with none, the certificates need no loading again at a reload.
    pub certified: usize,
}

/// The apps one snapshot changed against the one it was built on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppsDiff {
    /// The generation of the snapshot it was built on.
    pub since: u64,
    /// Apps whose entry is not the previous snapshot's (built afresh: new or changed).
    pub built: Vec<Arc<str>>,
    /// Apps the previous snapshot had and this one has not.
    pub gone: Vec<Arc<str>>,
}

/// One app: its config, its live state, its instances.
pub struct AppEntry {
    pub name: Arc<str>,
    /// The same `App` as the snapshot's config holds (shared, not copied).
    pub config: Arc<App>,
    pub live: Arc<AppLive>,
    pub instances: Vec<InstanceEntry>,
    /// The regions its instances are in; `InstanceEntry::region_index` points here.
    pub regions: Vec<Arc<str>>,
    /// Some instance has a driver, on this node or on the worker that runs it: placement looks
    /// at instances' power state (`docs/on-demand.md`). `false` for every other app, which then
    /// pays nothing for it.
    pub on_demand: bool,
}

pub struct InstanceEntry {
    pub id: InstanceId,
    pub region: Arc<str>,
    /// Index into the app's `regions`.
    pub region_index: u32,
    /// Estimated round-trip time from this node, in microseconds, from the region coordinates
    /// (placement's distance until a measured RTT is known).
    pub distance_us: u32,
    /// What a measured RTT is never taken below: the coordinate estimate when both regions
    /// have coordinates, else 0 (see [`InstanceEntry::distance_us`]).
    pub distance_floor_us: u32,
    pub address: HostPort,
    /// Shared with every snapshot that has this instance id.
    pub live: Arc<InstanceLive>,
    /// The node that runs it when that is another node: requests go over backhaul to it.
    pub peer: Option<Arc<PeerEntry>>,
}

/// Another node, reached over backhaul.
pub struct PeerEntry {
    pub id: Arc<str>,
    /// `host:port` of its backhaul listener.
    pub advertise: String,
    pub live: Arc<PeerLive>,
}

impl InstanceEntry {
    /// Placement's distance: the measured RTT of its node's backhaul connections when known,
    /// but never less than the estimate from region coordinates when both are configured. The estimate is about what
    /// the geography allows (≈15 µs per km); a measurement above it (a detour, congestion)
    /// moves the worker away, one below it means the coordinates say more than the network
    /// (a loopback fleet with injected distances, or coordinates set too far apart) and the
    /// configured distance stands.
    pub fn distance_us(&self) -> u32 {
        match self.peer.as_ref().and_then(|p| p.live.rtt_us()) {
            Some(rtt) => rtt.max(self.distance_floor_us),
            None => self.distance_us,
        }
    }
}

impl Snapshot {
    /// Build the next snapshot. Apps whose config is unchanged since `prev` (the same shared
    /// `App`, or an equal one), and whose instances' nodes are reached where they were, are
    /// reused as they are: a node joining or leaving rebuilds only the apps with instances on
    /// it. An equal `App` read anew (a file reload) is replaced in the config by the one the
    /// entry holds, so one copy stays. Live state is forgotten by the diff: the apps gone and
    /// the instances gone from rebuilt apps, never by a scan of the whole catalog.
    pub fn build(
        mut config: Arc<Config>,
        registry: &LiveRegistry,
        prev: Option<&Snapshot>,
    ) -> Snapshot {
        let generation = prev.map_or(1, |p| p.generation + 1);
        // Distances depend on where this node is and on the region table, not only on the app.
        let same_place = prev.is_some_and(|p| {
            p.config.node.region == config.node.region
                && p.config.node.id == config.node.id
                && p.config.regions == config.regions
        });
        let mut gone_instances = Vec::new();
        let mut shared = Vec::new();
        let mut rebuilt = 0;
        let mut moved = Vec::new();
        let mut built = Vec::new();
        // Where the previous snapshot's config has the very same chunk of apps at the same
        // place (an assembly from etcd copies only the chunks it changes, `Apps`), its entries
        // stand as they are, unless the peers moved: the map of apps starts as the previous one
        // (its shards shared) and only the apps of the other chunks are looked up by name.
        let same = prev.filter(|p| same_place && p.config.peers == config.peers);
        let mut apps = match same {
            Some(p) => p.apps.clone(),
            None => Shards::default(),
        };
        let kept = |c: usize, chunk: &Arc<Vec<Arc<App>>>| {
            same.and_then(|p| p.config.apps.parts().get(c))
                .is_some_and(|o| Arc::ptr_eq(o, chunk))
        };
        let has_certs = |app: &App| usize::from(!app.certificates.is_empty());
        // Counted by the diff on the previous count when the map starts as the previous one.
        let mut certified = same.map_or(0, |p| p.certified);
        let mut new_apps = 0;
        let mut index = 0;
        for (c, chunk) in config.apps.parts().iter().enumerate() {
            if kept(c, chunk) {
                index += chunk.len();
                continue;
            }
            for app in chunk.iter() {
                let old = prev.and_then(|p| p.apps.get(app.name.as_str()));
                new_apps += usize::from(old.is_none());
                let reused = old
                    .filter(|_| same_place)
                    .filter(|old| Arc::ptr_eq(&old.config, app) || *old.config == **app)
                    .filter(|old| old.same_peers(&config));
                match reused {
                    Some(old) => {
                        if !Arc::ptr_eq(&old.config, app) {
                            shared.push(index);
                        }
                        // The map started as the previous one: the entry is in it already
                        // (putting it again would copy its shard).
                        if same.is_none() {
                            certified += has_certs(&old.config);
                            apps.insert(old.name.clone(), old.clone());
                        }
                    }
                    None => {
                        rebuilt += 1;
                        let entry = Arc::new(AppEntry::build(app, &config, registry));
                        if prev.is_some() {
                            built.push(entry.name.clone());
                        }
                        if let Some(old) = old {
                            gone_instances.extend(entry.gone_since(old));
                            moved.extend(entry.moved_since(old));
                            if same.is_some() {
                                certified -= has_certs(&old.config);
                            }
                        }
                        certified += has_certs(app);
                        apps.insert(entry.name.clone(), entry);
                    }
                }
                index += 1;
            }
        }
        let mut gone_apps = Vec::new();
        // Names are unique: unless the previous apps outnumber those kept from them, none went.
        let some_gone = prev.is_some_and(|p| p.apps.len() + new_apps > config.apps.len());
        if let Some(p) = prev.filter(|_| some_gone) {
            // On the previous map, an app gone is in a chunk not kept and in none of the new
            // chunks not kept (a kept chunk holds the same apps as before); otherwise any app.
            let (candidates, named): (Vec<&Arc<App>>, HashSet<&str>) = match same {
                Some(_) => {
                    let parts = config.apps.parts();
                    let named = parts
                        .iter()
                        .enumerate()
                        .filter(|(c, chunk)| !kept(*c, chunk))
                        .flat_map(|(_, chunk)| chunk.iter().map(|a| a.name.as_str()))
                        .collect();
                    let old = p.config.apps.parts().iter().enumerate();
                    let candidates = old
                        .filter(|(c, chunk)| !parts.get(*c).is_some_and(|n| Arc::ptr_eq(n, chunk)))
                        .flat_map(|(_, chunk)| chunk.iter())
                        .collect();
                    (candidates, named)
                }
                None => (
                    p.config.apps.iter().collect(),
                    config.apps.iter().map(|a| a.name.as_str()).collect(),
                ),
            };
            for app in candidates {
                if named.contains(app.name.as_str()) {
                    continue;
                }
                if let Some(old) = p.apps.get(app.name.as_str()) {
                    if apps.remove(&old.name).is_some() {
                        certified -= has_certs(&old.config);
                    }
                    gone_apps.push(old.name.clone());
                    gone_instances.extend(old.instances.iter().map(|i| i.id.clone()));
                }
            }
        }
        if !shared.is_empty() {
            // One pass (a file read anew shares most of its apps with the entries).
            let c = Arc::make_mut(&mut config);
            let mut shared = shared.into_iter().peekable();
            c.apps = c
                .apps
                .iter()
                .enumerate()
                .map(|(index, app)| match shared.next_if_eq(&index) {
                    Some(_) => apps
                        .get(app.name.as_str())
                        .map_or_else(|| app.clone(), |entry| entry.config.clone()),
                    None => app.clone(),
                })
                .collect();
        }
        let diff = prev.map(|p| AppsDiff {
            since: p.generation,
            built,
            gone: gone_apps.clone(),
        });
        let snapshot = Snapshot {
            generation,
            config,
            apps,
            rebuilt,
            moved,
            diff,
            certified,
        };
        registry.forget(
            gone_apps,
            gone_instances,
            |name| snapshot.apps.contains_key(name),
            |id| snapshot.has_instance(id),
        );
        snapshot
    }

    pub fn app(&self, name: &str) -> Option<&Arc<AppEntry>> {
        self.apps.get(name)
    }

    /// Whether this snapshot names the instance (its app, then the app's instances).
    pub fn has_instance(&self, id: &InstanceId) -> bool {
        let app = id.as_str().split_once('/').map_or("", |(a, _)| a);
        self.apps
            .get(app)
            .is_some_and(|a| a.instances.iter().any(|i| i.id == *id))
    }
}

impl AppEntry {
    fn build(app: &Arc<App>, config: &Config, registry: &LiveRegistry) -> AppEntry {
        let name: Arc<str> = app.name.as_str().into();
        let here = config.node.region.as_str();
        let coords = |region: &str| config.regions.get(region).map(|c| (c.lat, c.lon));
        let mut regions: Vec<Arc<str>> = Vec::new();
        let instances = app
            .instances
            .iter()
            .map(|inst| {
                let id = InstanceId::new(&app.name, &inst.id);
                let region_index = match regions.iter().position(|r| **r == *inst.region) {
                    Some(i) => i,
                    None => {
                        regions.push(inst.region.as_str().into());
                        regions.len() - 1
                    }
                };
                let (from, to) = (coords(here), coords(&inst.region));
                let distance_us =
                    anyedge_placement::distance::estimate(None, inst.region == here, from, to);
                let known = inst.region != here && from.is_some() && to.is_some();
                let distance_floor_us = if known { distance_us } else { 0 };
                let peer = inst.node.as_deref().and_then(|node| {
                    let p = config.peers.get(node)?;
                    let id: Arc<str> = node.into();
                    Some(Arc::new(PeerEntry {
                        live: registry.peer(&id),
                        id,
                        advertise: p.advertise.clone(),
                    }))
                });
                let live = registry.instance(&id);
                // Only a driver this node can run is driven here; one run elsewhere (the
                // etcd catalog's) is asked for over backhaul, or, with no backhaul to its
                // node, is left alone (always running, as before drivers).
                let driver = inst.driver.as_ref();
                live.power
                    .drive(driver.is_some_and(|d| d.runnable()) && peer.is_none());
                live.power.drive_remote(driver.is_some() && peer.is_some());
                InstanceEntry {
                    peer,
                    live,
                    id,
                    region: regions[region_index].clone(),
                    region_index: region_index as u32,
                    distance_us,
                    distance_floor_us,
                    address: inst.address.clone(),
                }
            })
            .collect::<Vec<_>>();
        AppEntry {
            live: registry.app(&name),
            on_demand: instances.iter().any(|i| i.live.power.on_demand()),
            name,
            config: app.clone(),
            instances,
            regions,
        }
    }

    /// The instances that moved since `old` (another address, or another node's backhaul)
    /// under the same id. Each keeps its live state, but the connect failures and backoff
    /// earned at the old place say nothing about the new one and would hold the instance out
    /// of placement (up to 30 s) just when it is reachable again: they are cleared once the
    /// snapshot routes (not here: until then requests still go to the old address and would
    /// earn them again).
    fn moved_since(&self, old: &AppEntry) -> Vec<Arc<InstanceLive>> {
        let mut out = Vec::new();
        if self.instances.is_empty() {
            return out;
        }
        let before: HashMap<&InstanceId, &InstanceEntry> =
            old.instances.iter().map(|i| (&i.id, i)).collect();
        for i in &self.instances {
            let moved = before.get(&i.id).is_some_and(|o| {
                o.address != i.address
                    || o.peer.as_ref().map(|p| &p.advertise)
                        != i.peer.as_ref().map(|p| &p.advertise)
            });
            if moved {
                out.push(i.live.clone());
            }
        }
        out
    }

    /// The instances `old` (this app's previous entry) had that this one has not.
    fn gone_since(&self, old: &AppEntry) -> Vec<InstanceId> {
        let now: HashSet<&InstanceId> = self.instances.iter().map(|i| &i.id).collect();
        old.instances
            .iter()
            .filter(|i| !now.contains(&i.id))
            .map(|i| i.id.clone())
            .collect()
    }

    /// Whether each of its instances is reached through the peer `config` names for it (the
    /// same backhaul address, or none), as when this entry was built.
    fn same_peers(&self, config: &Config) -> bool {
        self.config
            .instances
            .iter()
            .zip(&self.instances)
            .all(|(i, e)| {
                let now = i.node.as_deref().and_then(|n| config.peers.get(n));
                now.map(|p| p.advertise.as_str()) == e.peer.as_ref().map(|p| p.advertise.as_str())
            })
    }

    /// The index of a region name among the app's regions.
    pub fn region_index(&self, name: &str) -> Option<u32> {
        self.regions
            .iter()
            .position(|r| r.eq_ignore_ascii_case(name))
            .map(|i| i as u32)
    }

    /// The index of an instance by its id within the app.
    pub fn instance_index(&self, id: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.id.instance() == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[node]
id = "edge"
region = "ord"
[cluster]
ca = "ca.pem"
cert = "c.pem"
key = "k.pem"
[regions.ord]
lat = 41.98
lon = -87.90
[regions.syd]
lat = -33.94
lon = 151.18
[[nodes]]
id = "w-syd"
region = "syd"
advertise = "127.0.0.1:4280"
[[nodes]]
id = "w-x"
region = "x"
advertise = "127.0.0.1:4281"
[[apps]]
name = "a"
[[apps.services]]
internal_port = 80
ports = [ { port = 8080, handlers = ["http"] } ]
[[apps.instances]]
id = "far"
region = "syd"
address = "127.0.0.1"
node = "w-syd"
[[apps.instances]]
id = "nowhere"
region = "x"
address = "127.0.0.1"
node = "w-x"
[[apps.instances]]
id = "here"
address = "127.0.0.1"
"#;

    /// A config of apps `a0`..`a{n}`, each with one instance.
    fn apps(n: usize) -> Config {
        let mut file = String::from("[node]\nid = \"e\"\n");
        for i in 0..n {
            file.push_str(&format!(
                "[[apps]]\nname = \"a{i}\"\n[[apps.services]]\ninternal_port = 80\nports = [ {{ port = 8080, handlers = [\"http\"] }} ]\n[[apps.instances]]\nid = \"i\"\naddress = \"127.0.0.1\"\n"
            ));
        }
        anyedge_config::parse(&file, "t.toml").expect("valid")
    }

    #[test]
    fn a_snapshot_built_on_another_by_pointer_is_the_snapshot_built_afresh() {
        // As the etcd assembly hands them: the unchanged apps are the same `Arc`s in the same
        // chunks (`Apps`); one changes, one goes, one comes, in turn and together. At 50 apps
        // (one chunk) and 700 (several, split as they fill and dropped as they empty).
        for n in [50, 700] {
            built_on_another_is_built_afresh(n);
        }
    }

    /// `n` pairs of certificate files (never read by a snapshot).
    fn certificates(n: usize) -> Vec<anyedge_config::CertificateFiles> {
        let files = anyedge_config::CertificateFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        };
        vec![files; n]
    }

    fn built_on_another_is_built_afresh(n: usize) {
        let registry = LiveRegistry::new();
        let mut config = apps(n);
        let mut prev = Snapshot::build(Arc::new(config.clone()), &registry, None);
        let spare = apps(60).apps;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for step in 0..300 {
            let (mut built, mut gone) = (Vec::new(), Vec::new());
            for k in 0..=rand(3) {
                let at = rand(config.apps.len());
                match rand(3) {
                    0 => {
                        let mut app = (*config.apps[at]).clone();
                        app.instances[0].address.port = Some(1 + rand(60_000) as u16);
                        app.certificates = certificates(rand(2));
                        built.push(app.name.clone());
                        config.apps[at] = Arc::new(app);
                    }
                    1 if config.apps.len() > 5 => {
                        gone.push(config.apps.remove(at).name.clone());
                    }
                    _ => {
                        let mut app = (*spare[rand(spare.len())]).clone();
                        app.name = format!("n{step}-{k}");
                        app.certificates = certificates(rand(2));
                        built.push(app.name.clone());
                        config.apps.insert(at, Arc::new(app));
                    }
                }
            }
            let next = Snapshot::build(Arc::new(config.clone()), &registry, Some(&prev));
            let afresh = Snapshot::build(Arc::new(config.clone()), &LiveRegistry::new(), None);
            let names = |s: &Snapshot| {
                let mut n: Vec<String> = s.apps.keys().map(|k| k.to_string()).collect();
                n.sort();
                n
            };
            assert_eq!(names(&next), names(&afresh), "step {step}");
            assert_eq!(next.certified, afresh.certified, "step {step}");
            let certified = config.apps.iter().filter(|a| !a.certificates.is_empty());
            assert_eq!(next.certified, certified.count(), "step {step}");
            for (name, entry) in &afresh.apps {
                assert!(
                    *next.apps[name].config == *entry.config,
                    "step {step}: {name}"
                );
                assert_eq!(
                    next.apps[name].instances[0].address,
                    entry.instances[0].address
                );
            }
            let diff = next.diff.clone().expect("built on another");
            let set = |v: Vec<String>| v.into_iter().collect::<HashSet<String>>();
            let listed = |v: &[Arc<str>]| set(v.iter().map(|n| n.to_string()).collect());
            // An app changed then removed in one step is gone, not built.
            let built: Vec<String> = built.into_iter().filter(|n| !gone.contains(n)).collect();
            // Only the apps changed are built: the others are found in the chunks kept.
            assert_eq!(next.rebuilt, set(built.clone()).len(), "step {step}");
            assert_eq!(listed(&diff.built), set(built), "step {step}");
            // An app that came and went in one step was never there.
            let gone = gone.into_iter().filter(|n| prev.apps.contains_key(n));
            assert_eq!(listed(&diff.gone), set(gone.collect()), "step {step}");
            assert_eq!(
                registry.instance_count(),
                next.apps.len(),
                "step {step}: forgotten"
            );
            prev = next;
        }
    }

    #[test]
    fn remote_instances_name_their_peer_and_measured_rtt_never_undercuts_coordinates() {
        let config = Arc::new(anyedge_config::parse(FILE, "test.toml").expect("valid"));
        let registry = LiveRegistry::new();
        let s = Snapshot::build(config, &registry, None);
        let app = s.app("a").expect("app");
        let [far, nowhere, here] = &app.instances[..] else {
            panic!("three instances")
        };
        assert_eq!(far.peer.as_ref().map(|p| &*p.id), Some("w-syd"));
        assert_eq!(
            far.peer.as_ref().map(|p| p.advertise.as_str()),
            Some("127.0.0.1:4280")
        );
        assert!(here.peer.is_none());
        let estimate = far.distance_us();
        assert!(estimate > 100_000, "ord to syd is far: {estimate}");
        // Loopback measures tens of microseconds: the coordinates stand.
        far.peer
            .as_ref()
            .expect("peer")
            .live
            .rtt_us
            .store(40, Ordering::Relaxed);
        assert_eq!(far.distance_us(), estimate);
        // A slower path than the geography says: the measurement moves it away.
        let slow = estimate + 50_000;
        far.peer
            .as_ref()
            .expect("peer")
            .live
            .rtt_us
            .store(slow, Ordering::Relaxed);
        assert_eq!(far.distance_us(), slow);
        // Without coordinates the measurement is all there is.
        let peer = nowhere.peer.as_ref().expect("peer");
        peer.live.rtt_us.store(900, Ordering::Relaxed);
        assert_eq!(nowhere.distance_us(), 900);
    }

    #[test]
    fn a_peer_joining_or_moving_rebuilds_only_the_apps_it_runs_instances_of() {
        let two_apps = format!(
            "{FILE}[[apps]]\nname = \"b\"\n[[apps.services]]\ninternal_port = 80\nports = [ {{ port = 8081, handlers = [\"http\"] }} ]\n[[apps.instances]]\nid = \"b1\"\naddress = \"127.0.0.1\"\n"
        );
        let config = anyedge_config::parse(&two_apps, "test.toml").expect("valid");
        let registry = LiveRegistry::new();
        let first = Snapshot::build(Arc::new(config.clone()), &registry, None);
        // A peer that no instance names joins: nothing is rebuilt.
        let mut joined = config.clone();
        joined.peers.insert(
            "w-new".into(),
            anyedge_config::Peer {
                region: "syd".into(),
                advertise: "127.0.0.1:4290".into(),
            },
        );
        let second = Snapshot::build(Arc::new(joined.clone()), &registry, Some(&first));
        for app in ["a", "b"] {
            assert!(Arc::ptr_eq(&first.apps[app], &second.apps[app]), "{app}");
        }
        // The node of a's instance `far` moves: a is rebuilt with the new address, b is not.
        let mut moved = joined;
        if let Some(p) = moved.peers.get_mut("w-syd") {
            p.advertise = "127.0.0.1:4299".into();
        }
        let third = Snapshot::build(Arc::new(moved), &registry, Some(&second));
        assert!(!Arc::ptr_eq(&second.apps["a"], &third.apps["a"]));
        assert!(Arc::ptr_eq(&second.apps["b"], &third.apps["b"]));
        let far = &third.apps["a"].instances[0];
        assert_eq!(
            far.peer.as_ref().map(|p| p.advertise.as_str()),
            Some("127.0.0.1:4299")
        );
        // Live state is carried: the same instance keeps its shared state.
        assert!(Arc::ptr_eq(&far.live, &second.apps["a"].instances[0].live));
    }

    fn many(apps: usize, moved: usize, gone: bool) -> String {
        let mut out = String::from("[node]\nid = \"n\"\n");
        for a in 0..apps {
            out.push_str(&format!("[[apps]]\nname = \"a{a}\"\nhostnames = [\"a{a}.test\"]\n[[apps.services]]\ninternal_port = 80\nports = [ {{ port = 8080, handlers = [\"http\"] }} ]\n"));
            for i in 0..3 {
                if gone && a == moved && i == 2 {
                    continue;
                }
                let port = if a == moved && i == 0 { 9 } else { 1000 + i };
                out.push_str(&format!(
                    "[[apps.instances]]\nid = \"i{i}\"\naddress = \"127.0.0.1:{port}\"\n"
                ));
            }
        }
        out
    }

    #[test]
    fn one_changed_app_of_many_is_the_only_one_built_and_a_file_read_again_is_held_once() {
        let parse = |t: &str| Arc::new(anyedge_config::parse(t, "t.toml").expect("valid"));
        let registry = LiveRegistry::new();
        let first = Snapshot::build(parse(&many(1000, usize::MAX, false)), &registry, None);
        assert_eq!(first.rebuilt, 1000);
        assert_eq!(registry.instance_count(), 3000);
        // The same file read again: nothing built, and the config holds the entries' apps.
        let second = Snapshot::build(
            parse(&many(1000, usize::MAX, false)),
            &registry,
            Some(&first),
        );
        assert_eq!(second.rebuilt, 0);
        for app in &second.config.apps {
            assert!(Arc::ptr_eq(app, &second.apps[app.name.as_str()].config));
        }
        // One app's instance moves and another of its instances goes: that app alone is
        // built, and only the instance gone is forgotten.
        let third = Snapshot::build(parse(&many(1000, 417, true)), &registry, Some(&second));
        assert_eq!(third.rebuilt, 1);
        assert!(!Arc::ptr_eq(&second.apps["a417"], &third.apps["a417"]));
        assert!(Arc::ptr_eq(&second.apps["a416"], &third.apps["a416"]));
        assert_eq!(registry.instance_count(), 2999);
        assert!(!third.has_instance(&InstanceId::new("a417", "i2")));
        // Kept state is the same state: the moved instance keeps its live entry, less the
        // connect backoff earned at its old address; an instance that did not move keeps that.
        assert!(Arc::ptr_eq(
            &second.apps["a417"].instances[0].live,
            &third.apps["a417"].instances[0].live
        ));
        let now = std::time::Instant::now();
        let [moved, stayed] = [0, 1].map(|i| third.apps["a418"].instances[i].live.clone());
        for live in [&moved, &stayed] {
            for _ in 0..crate::EJECT_AFTER {
                live.connect_failed(now);
            }
            assert!(live.ejected(now));
        }
        let fourth = Snapshot::build(parse(&many(1000, 418, false)), &registry, Some(&third));
        assert_eq!(fourth.rebuilt, 2, "a417 back as it was, a418 moved");
        // a417's i0 moved back and a418's i0 moved; a418's i1 stayed.
        assert_eq!(fourth.moved.len(), 2);
        assert!(fourth.moved.iter().any(|l| Arc::ptr_eq(l, &moved)));
        assert!(!fourth.moved.iter().any(|l| Arc::ptr_eq(l, &stayed)));
        // What puts it in force clears them (the edge, once its routes are stored).
        for live in &fourth.moved {
            live.connect_succeeded();
        }
        assert!(
            !moved.backing_off(now) && !moved.ejected(now),
            "a new address starts afresh"
        );
        assert!(stayed.ejected(now), "the same address keeps its backoff");
    }
}
