//! A node on the etcd store (`[catalog] store = "etcd"`): its apps and the other nodes'
//! instances follow etcd, its own instances and node key are registered under its lease, and
//! both feed the same reload path as the file store. `docs/cluster.md` tells the whole story.

use anyedge_config::{CatalogConfig, Config};
use anyedge_store::state::grace::{Reports, GRACE};
use anyedge_store::{CatalogStatus, EtcdCatalog, Keys, Registration, Viewer};
use std::sync::Arc;
use std::time::Duration;

/// How long a starting node waits for its first listing before it starts without (it then
/// serves its own sections only, and takes the apps in when etcd answers).
const FIRST_SYNC: Duration = Duration::from_secs(5);
/// A change is applied once the catalog has been quiet this long after it, so the events of
/// one burst (a worker's registration, a batched `apps put`) cost one reload...
const QUIET: Duration = Duration::from_millis(10);
/// ...but never later than this after the first, however long the burst goes on.
const COALESCE: Duration = Duration::from_millis(50);
/// How long a stopping node tries to revoke its lease.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node that may keep instances in grace (one left the catalog lately) looks
/// whether the set it keeps changed (a worker's feed ended or stopped naming one, the bound
/// passed): at most this late, an instance leaves placement.
const GRACE_CHECK: Duration = Duration::from_millis(200);

pub struct EtcdFeed {
    catalog: EtcdCatalog,
    registration: Registration,
    /// The instances the grace rule kept in the last config (`<app>/<id>`).
    graced: Vec<String>,
}

impl EtcdFeed {
    /// Start following etcd and registering, if `base` says `store = "etcd"`.
    pub async fn start(base: &Arc<Config>) -> Option<EtcdFeed> {
        let CatalogConfig::Etcd(cfg) = &base.catalog else {
            return None;
        };
        let keys = Keys::default();
        let catalog = EtcdCatalog::start(cfg.clone(), keys.clone(), Viewer::of(base));
        let registration = Registration::start(
            cfg.clone(),
            keys,
            base.clone(),
            anyedge_store::register::LEASE_TTL,
        );
        if !catalog.first_sync(FIRST_SYNC).await {
            // Why, when an attempt has ended already (etcd away, a listing refused).
            let why = catalog.status().last_error();
            tracing::warn!(endpoints = ?cfg.endpoints, error = why.as_deref().unwrap_or("none so far (etcd slow to answer, or a large catalog still decoding)"), "the catalog did not load in {FIRST_SYNC:?}: starting without its apps; they follow when it loads");
        }
        Some(EtcdFeed {
            catalog,
            registration,
            graced: Vec::new(),
        })
    }

    /// Resolves when the catalog changed in a way that concerns this node (not when a node it
    /// does not route to joins or leaves), once it has been [`QUIET`] for a moment (at most
    /// [`COALESCE`] after the change), so a burst is applied once.
    /// The set of instances the grace rule keeps changing is a change too (`reports`: what
    /// the workers' load feeds report).
    pub async fn changed(&mut self, reports: Reports<'_>) {
        loop {
            let (graced, departed) = self.catalog.graced(reports);
            if graced != self.graced {
                return;
            }
            tokio::select! {
                _ = self.catalog.changed() => break,
                _ = tokio::time::sleep(GRACE_CHECK), if departed => {}
            }
        }
        let cap = tokio::time::Instant::now() + COALESCE;
        loop {
            let until = (tokio::time::Instant::now() + QUIET).min(cap);
            match tokio::time::timeout_at(until, self.catalog.changed()).await {
                Ok(()) if tokio::time::Instant::now() < cap => continue,
                _ => return,
            }
        }
    }

    /// The node's config: its file `base` with the catalog's apps, and the instances lost with
    /// their worker's lease that the worker still reports (`reports`), for a while
    /// (`docs/cluster.md`, "Instances lost with a lease").
    pub fn config(&mut self, base: &Config, reports: Reports<'_>) -> Config {
        self.note_graced(reports);
        self.catalog.config_graced(base, reports)
    }

    /// The instances kept by the grace rule now, logged as they start and stop being kept.
    fn note_graced(&mut self, reports: Reports<'_>) {
        let (graced, _) = self.catalog.graced(reports);
        for kept in graced.iter().filter(|g| !self.graced.contains(g)) {
            tracing::warn!(instance = %kept, grace = ?GRACE, "instance left the catalog with its worker's lease; kept while the worker's load feed reports it");
        }
        for ended in self.graced.iter().filter(|g| !graced.contains(g)) {
            tracing::info!(instance = %ended, "grace ended: the instance follows the catalog again");
        }
        self.graced = graced;
    }

    /// Where the node's config is assembled from, to do it off the control runtime with
    /// [`anyedge_store::ConfigSource::config_graced`] (the changes seen so far count as taken,
    /// and the grace rule's changes are noted, as with [`Self::config`]).
    pub fn source(&mut self, reports: Reports<'_>) -> anyedge_store::ConfigSource {
        self.note_graced(reports);
        self.catalog.source()
    }

    /// The node's file changed: register its instances anew.
    pub fn update(&self, base: Arc<Config>) {
        self.catalog.set_viewer(Viewer::of(&base));
        self.registration.update(base);
    }

    pub fn status(&self) -> Arc<CatalogStatus> {
        self.catalog.status().clone()
    }

    /// Revoke the lease: this node's instances leave the catalog at once.
    pub async fn stop(self) {
        self.registration.stop(REVOKE_TIMEOUT).await;
    }
}

/// Resolves when `feed` changed; never without a feed.
pub async fn changed(feed: &mut Option<EtcdFeed>, reports: Reports<'_>) {
    match feed {
        Some(f) => f.changed(reports).await,
        None => std::future::pending().await,
    }
}

/// A node kept following etcd by a task of its own (the demo's nodes; `anyedge run` does the
/// same in its main loop, beside signals and file changes).
pub struct Following {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Following {
    /// Stop following and revoke the node's lease (its instances leave the catalog).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Start a node on `config`; on the etcd store, with its catalog from etcd and a task that
/// applies every change.
pub async fn start_following(
    config: Config,
) -> Result<(Arc<crate::node::Node>, Option<Following>), crate::node::StartError> {
    let base = Arc::new(config);
    let (node, feed) = start_node(&base, None, Vec::new(), Default::default()).await?;
    let node = Arc::new(node);
    let Some(mut feed) = feed else {
        return Ok((node, None));
    };
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let n = node.clone();
    let task = tokio::spawn(async move {
        let reports = |peer: &str, instance: &str| n.feed_reports(peer, instance);
        loop {
            tokio::select! {
                _ = feed.changed(&reports) => crate::node::apply(&n, feed.config(&base, &reports)),
                _ = &mut stopped => break,
            }
        }
        feed.stop().await;
    });
    Ok((node, Some(Following { task, stop })))
}

/// Start a node on its file `base`: on the etcd store, follow etcd and register first, so the
/// node starts with the catalog's apps and the other nodes' instances, and report the
/// catalog's state on its admin port. A node that cannot start takes its registration back at
/// once rather than after the lease's TTL.
pub async fn start_node(
    base: &Arc<Config>,
    admin_listen: Option<std::net::SocketAddr>,
    shards: Vec<tokio::runtime::Handle>,
    from: crate::node::Takeover,
) -> Result<(crate::node::Node, Option<EtcdFeed>), crate::node::StartError> {
    let mut feed = EtcdFeed::start(base).await;
    let first = match feed.as_mut() {
        Some(f) => f.config(base, &|_, _| false),
        None => (**base).clone(),
    };
    match crate::node::Node::start_taking_over(first, admin_listen, shards, from).await {
        Ok(node) => {
            if let Some(f) = &feed {
                node.set_catalog_status(f.status());
            }
            Ok((node, feed))
        }
        Err(e) => {
            if let Some(f) = feed {
                f.stop().await;
            }
            Err(e)
        }
    }
}
