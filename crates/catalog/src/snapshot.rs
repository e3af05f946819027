//! An immutable picture of every app and instance, shared by `Arc` and swapped whole.

use crate::live::{AppLive, InstanceLive, LiveRegistry};
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
}

pub struct InstanceEntry {
    pub id: InstanceId,
    pub region: Arc<str>,
    pub address: HostPort,
    /// Shared with every snapshot that has this instance id.
    pub live: Arc<InstanceLive>,
}

impl Snapshot {
    /// Build the next snapshot. Apps whose config is unchanged since `prev` are reused as they are.
    pub fn build(
        config: Arc<Config>,
        registry: &LiveRegistry,
        prev: Option<&Snapshot>,
    ) -> Snapshot {
        let generation = prev.map_or(1, |p| p.generation + 1);
        let apps = config
            .apps
            .iter()
            .map(|app| {
                let reused = prev
                    .and_then(|p| p.apps.get(app.name.as_str()))
                    .filter(|old| old.config == *app)
                    .cloned();
                let entry = reused.unwrap_or_else(|| Arc::new(AppEntry::build(app, registry)));
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
    fn build(app: &App, registry: &LiveRegistry) -> AppEntry {
        let name: Arc<str> = app.name.as_str().into();
        let instances = app
            .instances
            .iter()
            .map(|inst| {
                let id = InstanceId::new(&app.name, &inst.id);
                InstanceEntry {
                    live: registry.instance(&id),
                    id,
                    region: inst.region.as_str().into(),
                    address: inst.address.clone(),
                }
            })
            .collect();
        AppEntry {
            live: registry.app(&name),
            name,
            config: app.clone(),
            instances,
        }
    }
}
