//! A node registers itself (`nodes/<id>`) and, as a worker, the instances it runs (its file's
//! `[[instances]]`, `instances/<app>/<id>`) under a lease of its own, kept alive every third
//! of its TTL: when the node dies, the lease runs out and its keys vanish. A lost lease (a
//! keep-alive answering TTL 0, or failing after an outage) is granted anew and every key put
//! again. File reloads put new and changed instances and delete removed ones. A graceful
//! stop revokes the lease, so the node's keys go at once.

use crate::client::{connect, StoreError};
use crate::keys::{Key, Keys};
use crate::sync::jitter;
use crate::values::{InstanceValue, NodeValue, SCHEMA};
use anyedge_config::{Config, EtcdConfig};
use etcd_client::{Client, PutOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The lease's time to live.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The keys and values a node keeps under its lease, for its file `base`.
pub fn wanted(keys: &Keys, base: &Config) -> BTreeMap<String, Vec<u8>> {
    let node = &base.node;
    let mut out = BTreeMap::new();
    let value = NodeValue {
        schema: SCHEMA,
        id: node.id.clone(),
        region: node.region.clone(),
        advertise: node.advertise.clone(),
    };
    out.insert(keys.key(&Key::Node(node.id.clone())), value.encode());
    if node.roles.worker {
        for li in &base.local_instances {
            let key = Key::Instance {
                app: li.app.clone(),
                id: li.instance.id.clone(),
            };
            out.insert(
                keys.key(&key),
                InstanceValue::new(&li.instance, &node.id).encode(),
            );
        }
    }
    out
}

/// The running registration (a background task).
pub struct Registration {
    base: watch::Sender<Arc<Config>>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registration {
    pub fn start(cfg: EtcdConfig, keys: Keys, base: Arc<Config>, ttl: Duration) -> Registration {
        let (tx, rx) = watch::channel(base);
        let (stop, stopped) = oneshot::channel();
        let registrar = Registrar {
            cfg,
            keys,
            base: rx,
            ttl,
        };
        Registration {
            base: tx,
            stop: Some(stop),
            task: tokio::spawn(registrar.run(stopped)),
        }
    }

    /// The node's file changed: register what it says now.
    pub fn update(&self, base: Arc<Config>) {
        self.base.send_replace(base);
    }

    /// Revoke the lease (the node's keys go at once), waiting at most `timeout`.
    pub async fn stop(mut self, timeout: Duration) {
        let Some(stop) = self.stop.take() else { return };
        let (done, revoked) = oneshot::channel();
        if stop.send(done).is_ok() {
            let _ = tokio::time::timeout(timeout, revoked).await;
        }
    }
}

struct Registrar {
    cfg: EtcdConfig,
    keys: Keys,
    base: watch::Receiver<Arc<Config>>,
    ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the lease expired")]
    Expired,
    #[error("the keep-alive stream ended")]
    Closed,
}

impl Registrar {
    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let mut backoff = BACKOFF.0;
        let mut old_lease = None;
        loop {
            let mut lease = None;
            let end = tokio::select! {
                end = self.session(&mut lease, &mut old_lease, &mut backoff) => end,
                done = &mut stop => return self.finish(lease.or(old_lease), done.ok()).await,
            };
            tracing::warn!(error = %end, retry_in = ?backoff, "etcd registration lost; registering again");
            old_lease = lease.or(old_lease);
            // A stop during the backoff still revokes what may be left.
            tokio::select! {
                _ = tokio::time::sleep(jitter(backoff)) => {}
                done = &mut stop => return self.finish(old_lease, done.ok()).await,
            }
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// Stopping: revoke the lease, then tell [`Registration::stop`].
    async fn finish(&self, lease: Option<i64>, done: Option<oneshot::Sender<()>>) {
        self.revoke(lease).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    async fn revoke(&self, lease: Option<i64>) {
        let Some(id) = lease else { return };
        match connect(&self.cfg).await {
            Ok(mut c) => match c.lease_revoke(id).await {
                Ok(_) => tracing::info!("etcd lease revoked; this node's keys are gone"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot revoke the etcd lease; its keys go with its TTL")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot revoke the etcd lease; its keys go with its TTL")
            }
        }
    }

    /// Grant a lease, put every key under it, then keep it alive and follow file changes,
    /// until something fails.
    async fn session(
        &mut self,
        lease: &mut Option<i64>,
        old_lease: &mut Option<i64>,
        backoff: &mut Duration,
    ) -> Lost {
        match self.try_session(lease, old_lease, backoff).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn try_session(
        &mut self,
        lease: &mut Option<i64>,
        old_lease: &mut Option<i64>,
        backoff: &mut Duration,
    ) -> Result<std::convert::Infallible, Lost> {
        let mut client = connect(&self.cfg).await?;
        let ttl = i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(10);
        let id = client.lease_grant(ttl, None).await?.id();
        *lease = Some(id);
        let mut put = BTreeMap::new();
        let want = wanted(&self.keys, &self.base.borrow_and_update());
        sync_keys(&mut client, &self.keys, id, &mut put, want).await?;
        // Keys put again under the new lease left the old one; revoking it now drops only
        // keys that are no longer wanted (if it still exists at all).
        if let Some(old) = old_lease.take() {
            let _ = client.lease_revoke(old).await;
        }
        tracing::info!(lease = id, keys = put.len(), "registered in etcd");
        *backoff = BACKOFF.0;
        let (mut keeper, mut answers) = client.lease_keep_alive(id).await?;
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    keeper.keep_alive().await?;
                    let answer = tokio::time::timeout(self.ttl / 3, answers.message()).await;
                    match answer {
                        Ok(Ok(Some(a))) if a.ttl() > 0 => {}
                        Ok(Ok(Some(_))) => return Err(Lost::Expired),
                        Ok(Ok(None)) => return Err(Lost::Closed),
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => return Err(Lost::Closed),
                    }
                }
                changed = self.base.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    let want = wanted(&self.keys, &self.base.borrow_and_update());
                    sync_keys(&mut client, &self.keys, id, &mut put, want).await?;
                }
            }
        }
    }
}

/// Make etcd hold `want` under `lease`: put what is new or changed, delete what `put` has that
/// `want` has not. `put` tracks what this session wrote. The node's own key goes first, so a
/// node that routes to this one knows where its backhaul is before its first instance comes
/// (else it would route that instance by its bare address for a moment, and reload again when
/// the node key came).
async fn sync_keys(
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    put: &mut BTreeMap<String, Vec<u8>>,
    want: BTreeMap<String, Vec<u8>>,
) -> Result<(), etcd_client::Error> {
    let gone: Vec<String> = put
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        client.delete(key.as_str(), None).await?;
        tracing::info!(key, "unregistered");
        put.remove(&key);
    }
    let (nodes, instances): (Vec<_>, Vec<_>) = want
        .into_iter()
        .partition(|(key, _)| matches!(keys.parse(key.as_bytes()), Some(Key::Node(_))));
    for (key, value) in nodes.into_iter().chain(instances) {
        if put.get(&key) == Some(&value) {
            continue;
        }
        client
            .put(
                key.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        tracing::info!(key, "registered");
        put.insert(key, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
