//! The node's view of etcd: list everything at one revision, then watch from the next one (no
//! gap, no duplicate). A watch cancelled by compaction relists and diffs (re-watching from the
//! old revision would loop forever: PITFALLS.md). A lost connection keeps the last state in
//! force, reconnects with backoff, and relists. Every change bumps a version number the node
//! waits on; the node assembles its config from [`EtcdCatalog::config`] when it is ready (at
//! most every 50 ms), so a burst of events costs one rebuild.

use crate::client::{connect, StoreError};
use crate::keys::Keys;
use crate::state::{CatalogState, Change};
use anyedge_config::{Config, EtcdConfig};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Reconnect backoff: doubles from the first to the last, with jitter.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Whether the catalog is current, for `/healthz` and the metrics.
#[derive(Debug)]
pub struct CatalogStatus {
    connected: AtomicBool,
    revision: AtomicI64,
    /// Times the connection to etcd was lost while following it.
    disconnects: AtomicU64,
    /// Full listings of the catalog (the first, and one after each loss or compaction).
    listings: AtomicU64,
    /// When the catalog was last known current (the connection was lost then), or the start.
    current_at: Mutex<Instant>,
}

impl CatalogStatus {
    fn new() -> CatalogStatus {
        CatalogStatus {
            connected: AtomicBool::new(false),
            revision: AtomicI64::new(0),
            disconnects: AtomicU64::new(0),
            listings: AtomicU64::new(0),
            current_at: Mutex::new(Instant::now()),
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The etcd revision the catalog reflects (0 before the first listing).
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// How long the catalog may have missed changes: zero while watching, else the time since
    /// the watch was lost (or since the start, before the first listing).
    pub fn stale_for(&self) -> Duration {
        match self.connected() {
            true => Duration::ZERO,
            false => self.lock().elapsed(),
        }
    }

    /// Times the connection to etcd was lost while following it.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    /// Full listings of the catalog so far.
    pub fn listings(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    fn listed(&self) {
        self.listings.fetch_add(1, Ordering::Relaxed);
    }

    fn set_connected(&self, revision: i64) {
        self.revision.store(revision, Ordering::Relaxed);
        self.connected.store(true, Ordering::Release);
    }

    fn set_disconnected(&self) {
        if self.connected.swap(false, Ordering::AcqRel) {
            self.disconnects.fetch_add(1, Ordering::Relaxed);
            *self.lock() = Instant::now();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.current_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The catalog kept in step with etcd by a background task (stopped on drop).
pub struct EtcdCatalog {
    state: Arc<Mutex<CatalogState>>,
    status: Arc<CatalogStatus>,
    version: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdCatalog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdCatalog {
    /// Start following etcd on the current runtime. Returns at once; see [`Self::first_sync`].
    pub fn start(cfg: EtcdConfig, keys: Keys) -> EtcdCatalog {
        let state = Arc::new(Mutex::new(CatalogState::new(keys.clone())));
        let status = Arc::new(CatalogStatus::new());
        let (tx, version) = watch::channel(0);
        let follower = Follower {
            cfg,
            keys,
            state: state.clone(),
            status: status.clone(),
            version: tx,
        };
        EtcdCatalog {
            state,
            status,
            version,
            task: tokio::spawn(follower.run()),
        }
    }

    /// Wait until the first listing is in, or `timeout`; returns whether it came.
    pub async fn first_sync(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.status.revision() == 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Resolves when the catalog changed since the last [`Self::config`].
    pub async fn changed(&mut self) {
        if self.version.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The node's config: its file sections (`base`) with the catalog's apps and instances.
    pub fn config(&mut self, base: &Config) -> Config {
        self.version.borrow_and_update();
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config(base)
    }

    pub fn status(&self) -> &Arc<CatalogStatus> {
        &self.status
    }
}

struct Follower {
    cfg: EtcdConfig,
    keys: Keys,
    state: Arc<Mutex<CatalogState>>,
    status: Arc<CatalogStatus>,
    version: watch::Sender<u64>,
}

/// Why one session with etcd ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the watch stream ended")]
    Closed,
}

impl Follower {
    async fn run(self) {
        let mut backoff = BACKOFF.0;
        loop {
            let end = self.session(&mut backoff).await;
            self.status.set_disconnected();
            tracing::warn!(error = %end, retry_in = ?backoff, "etcd catalog disconnected; serving the last snapshot");
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// Connect, then list and watch until the connection fails (compactions relist within the
    /// session).
    async fn session(&self, backoff: &mut Duration) -> SessionEnd {
        let mut client = match connect(&self.cfg).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        loop {
            let revision = match self.list(&mut client).await {
                Ok(r) => r,
                Err(e) => return e.into(),
            };
            *backoff = BACKOFF.0;
            match self.watch(&mut client, revision).await {
                Ok(()) => continue,
                Err(e) => return e,
            }
        }
    }

    /// Read every key at one revision and apply the difference; returns the revision.
    async fn list(&self, client: &mut Client) -> Result<i64, etcd_client::Error> {
        let resp = client
            .get(self.keys.all(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let listing: Vec<(Vec<u8>, Vec<u8>)> = resp
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        let changes = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.diff(&listing)
        };
        tracing::info!(
            revision,
            keys = listing.len(),
            changes = changes.len(),
            "etcd catalog listed"
        );
        self.apply(changes);
        self.status.listed();
        self.status.set_connected(revision);
        Ok(revision)
    }

    /// Watch from `revision + 1`. `Ok` means relist (compaction or cancellation); `Err` means
    /// the connection is gone.
    async fn watch(&self, client: &mut Client, revision: i64) -> Result<(), SessionEnd> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let mut stream = client.watch(self.keys.all(), Some(options)).await?;
        loop {
            let Some(resp) = stream.message().await? else {
                return Err(SessionEnd::Closed);
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    watched_from = revision + 1,
                    compacted_to = resp.compact_revision(),
                    "etcd watch compacted; relisting"
                );
                return Ok(());
            }
            if resp.canceled() {
                tracing::warn!(
                    reason = resp.cancel_reason(),
                    "etcd watch cancelled; relisting"
                );
                return Ok(());
            }
            let changes: Vec<Change> = resp
                .events()
                .iter()
                .filter_map(|e| {
                    let kv = e.kv()?;
                    Some(match e.event_type() {
                        EventType::Put => Change::Put {
                            key: kv.key().to_vec(),
                            value: kv.value().to_vec(),
                        },
                        EventType::Delete => Change::Delete {
                            key: kv.key().to_vec(),
                        },
                    })
                })
                .collect();
            self.apply(changes);
            if let Some(h) = resp.header() {
                self.status.set_connected(h.revision());
            }
        }
    }

    fn apply(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let changed = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            changes
                .into_iter()
                .fold(false, |changed, c| state.apply(c) | changed)
        };
        if changed {
            self.version.send_modify(|v| *v += 1);
        }
    }
}

/// Up to a quarter more, so a fleet does not reconnect in step.
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d / 4 * (nanos % 1000) / 1000
}

#[cfg(test)]
mod tests;
