//! An immutable picture of every app and instance, shared by `Arc` and swapped whole.

use crate::live::{AppLive, InstanceLive, LiveRegistry, PeerLive};
use anyedge_config::{App, Config, HostPort};
use anyedge_core::InstanceId;
use std::collections::HashMap;
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
    /// Placement's distance: the measured RTT to its node's backhaul when known, else the
    /// estimate from region coordinates.
    pub fn distance_us(&self) -> u32 {
        self.peer
            .as_ref()
            .and_then(|p| p.live.rtt_us())
            .unwrap_or(self.distance_us)
    }
}

impl Snapshot {
    /// Build the next snapshot. Apps whose config is unchanged since `prev` are reused as they are.
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
                && p.config.peers == config.peers
        });
        let apps = config
            .apps
            .iter()
            .map(|app| {
                let reused = prev
                    .filter(|_| same_place)
                    .and_then(|p| p.apps.get(app.name.as_str()))
                    .filter(|old| old.config == *app)
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
                let distance_us = anyedge_placement::distance::estimate(
                    None,
                    inst.region == here,
                    coords(here),
                    coords(&inst.region),
                );
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
