//! An immutable picture of every app and instance, shared by `Arc` and swapped whole.

use crate::live::{AppLive, InstanceLive, LiveRegistry, PeerLive};
use anyedge_config::{App, Config, HostPort};
use anyedge_core::InstanceId;
use std::collections::HashMap;
#[cfg(test)]
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One generation of the catalog.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub apps: HashMap<Arc<str>, Arc<AppEntry>>,
}

/// One app: its config, its live state, its instances.
pub struct AppEntry {
    pub name: Arc<str>,
    pub config: App,
    pub live: Arc<AppLive>,
    pub instances: Vec<InstanceEntry>,
    /// The regions its instances are in; `InstanceEntry::region_index` points here.
    pub regions: Vec<Arc<str>>,
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
    /// Build the next snapshot. Apps whose config is unchanged since `prev`, and whose
    /// instances' nodes are reached where they were, are reused as they are: a node joining or
    /// leaving rebuilds only the apps with instances on it.
    pub fn build(
        config: Arc<Config>,
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
        let apps = config
            .apps
            .iter()
            .map(|app| {
                let reused = prev
                    .filter(|_| same_place)
                    .and_then(|p| p.apps.get(app.name.as_str()))
                    .filter(|old| old.config == *app && old.same_peers(&config))
                    .cloned();
                let entry =
                    reused.unwrap_or_else(|| Arc::new(AppEntry::build(app, &config, registry)));
                (entry.name.clone(), entry)
            })
            .collect::<HashMap<_, _>>();
        let snapshot = Snapshot {
            generation,
            config,
            apps,
        };
        registry.retain(
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
    fn build(app: &App, config: &Config, registry: &LiveRegistry) -> AppEntry {
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
                InstanceEntry {
                    peer,
                    live: registry.instance(&id),
                    id,
                    region: regions[region_index].clone(),
                    region_index: region_index as u32,
                    distance_us,
                    distance_floor_us,
                    address: inst.address.clone(),
                }
            })
            .collect();
        AppEntry {
            live: registry.app(&name),
            name,
            config: app.clone(),
            instances,
            regions,
        }
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
}
