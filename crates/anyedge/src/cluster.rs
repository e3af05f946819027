//! A node on the etcd store (`[catalog] store = "etcd"`): its apps and the other nodes'
//! instances follow etcd, its own instances and node key are registered under its lease, and
//! both feed the same reload path as the file store. `docs/cluster.md` tells the whole story.

use anyedge_config::{CatalogConfig, Config};
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

pub struct EtcdFeed {
    catalog: EtcdCatalog,
    registration: Registration,
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
        })
    }

    /// Resolves when the catalog changed in a way that concerns this node (not when a node it
    /// does not route to joins or leaves), once it has been [`QUIET`] for a moment (at most
    /// [`COALESCE`] after the change), so a burst is applied once.
    pub async fn changed(&mut self) {
        self.catalog.changed().await;
        let cap = tokio::time::Instant::now() + COALESCE;
        loop {
            let until = (tokio::time::Instant::now() + QUIET).min(cap);
            match tokio::time::timeout_at(until, self.catalog.changed()).await {
                Ok(()) if tokio::time::Instant::now() < cap => continue,
                _ => return,
            }
        }
    }

    /// The node's config: its file `base` with the catalog's apps.
    pub fn config(&mut self, base: &Config) -> Config {
        self.catalog.config(base)
    }

    /// Where the node's config is assembled from, to do it off the control runtime (the
    /// changes seen so far count as taken, as with [`Self::config`]).
    pub fn source(&mut self) -> anyedge_store::ConfigSource {
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
pub async fn changed(feed: &mut Option<EtcdFeed>) {
    match feed {
        Some(f) => f.changed().await,
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
        loop {
            tokio::select! {
                _ = feed.changed() => crate::node::apply(&n, feed.config(&base)),
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
        Some(f) => f.config(base),
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
