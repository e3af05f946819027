//! The node's view of etcd: list everything at one revision, then watch from the next one (no
//! gap, no duplicate). A watch cancelled by compaction relists and diffs (re-watching from the
//! old revision would loop forever: PITFALLS.md). A lost connection keeps the last state in
//! force, reconnects with backoff, and relists. Every change bumps a version number the node
//! waits on; the node assembles its config from [`EtcdCatalog::config`] when the catalog has
//! been quiet for a moment (`anyedge::cluster`), so a burst of events costs one rebuild.

use crate::client::{connect, StoreError};
use crate::keys::Keys;
use crate::pages::ListError;
use crate::state::grace::Reports;
use crate::state::{CatalogState, Change, Viewer};
use anyedge_config::{Config, EtcdConfig};
use etcd_client::{Client, EventType, WatchOptions};
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
    /// Why the last session with etcd ended, until a listing succeeds again.
    last_error: Mutex<Option<String>>,
    /// Instances the node keeps by the grace rule (`crate::state::grace`) in its config now.
    graced: AtomicU64,
}

impl CatalogStatus {
    fn new() -> CatalogStatus {
        CatalogStatus {
            connected: AtomicBool::new(false),
            revision: AtomicI64::new(0),
            disconnects: AtomicU64::new(0),
            listings: AtomicU64::new(0),
            current_at: Mutex::new(Instant::now()),
            last_error: Mutex::new(None),
            graced: AtomicU64::new(0),
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

    /// Instances the node keeps by the grace rule in its config now (lost from the catalog with
    /// their worker's lease, still reported by the worker).
    pub fn graced(&self) -> u64 {
        self.graced.load(Ordering::Relaxed)
    }

    /// Full listings of the catalog so far.
    pub fn listings(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    /// Why the catalog is not current: the error that ended the last session with etcd (a
    /// listing that failed, a lost connection), until a listing succeeds again. `None` while
    /// current, and at the start before the first attempt ended.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }

    fn listed(&self) {
        self.listings.fetch_add(1, Ordering::Relaxed);
        self.set_error(None);
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
    /// Start following etcd on the current runtime for the node `viewer` says: only changes
    /// that concern it wake [`Self::changed`]. Returns at once; see [`Self::first_sync`].
    pub fn start(cfg: EtcdConfig, keys: Keys, viewer: Viewer) -> EtcdCatalog {
        let state = Arc::new(Mutex::new(CatalogState::for_viewer(keys.clone(), viewer)));
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

    /// The node's file changed: judge the changes from now on for `viewer`.
    pub fn set_viewer(&self, viewer: Viewer) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_viewer(viewer);
    }

    /// Resolves when the catalog changed in a way that concerns this node since the last
    /// [`Self::config`].
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

    /// Like [`Self::config`], for a caller that assembles the config elsewhere (off the
    /// runtime that follows etcd): the changes seen so far count as taken now.
    pub fn source(&mut self) -> ConfigSource {
        self.version.borrow_and_update();
        ConfigSource {
            state: self.state.clone(),
        }
    }

    /// [`Self::config`] with the instances the grace rule keeps now (`crate::state::grace`):
    /// `reports` says whether a worker reports an instance over a live load feed.
    pub fn config_graced(&mut self, base: &Config, reports: Reports<'_>) -> Config {
        self.version.borrow_and_update();
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let graced = state.graced(now, reports).len();
        self.status.graced.store(graced as u64, Ordering::Relaxed);
        state.config_graced(base, now, reports)
    }

    /// The instances the grace rule keeps now (`<app>/<id>`), and whether any instance left
    /// lately enough that the rule may keep it (`false`: the list stays empty until one leaves).
    pub fn graced(&self, reports: Reports<'_>) -> (Vec<String>, bool) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let graced = state.graced(now, reports);
        // The gauge follows what the node's config is assembled with next (also when that is
        // done off the runtime, through a `ConfigSource`).
        self.status
            .graced
            .store(graced.len() as u64, Ordering::Relaxed);
        (graced, state.has_departed(now))
    }

    pub fn status(&self) -> &Arc<CatalogStatus> {
        &self.status
    }
}

/// The catalog's state, to assemble a node's config from on another thread.
pub struct ConfigSource {
    state: Arc<Mutex<CatalogState>>,
}

impl ConfigSource {
    /// The node's config: its file sections (`base`) with the catalog's apps and instances.
    pub fn config(&self, base: &Config) -> Config {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config(base)
    }

    /// [`Self::config`] with the instances the grace rule keeps now (see
    /// [`EtcdCatalog::config_graced`]).
    pub fn config_graced(&self, base: &Config, reports: Reports<'_>) -> Config {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_graced(base, Instant::now(), reports)
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
    #[error("cannot load the catalog from etcd: {0}")]
    List(#[from] ListError),
    #[error("decoding the catalog stopped: {0}")]
    Decode(#[from] tokio::task::JoinError),
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
            self.status.set_error(Some(end.to_string()));
            tracing::warn!(error = %end, retry_in = ?backoff, "etcd catalog not current; serving the last snapshot");
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
                Err(e) => return e,
            };
            *backoff = BACKOFF.0;
            match self.watch(&mut client, revision).await {
                Ok(()) => continue,
                Err(e) => return e,
            }
        }
    }

    /// Read every key at one revision (page by page) and apply the difference; returns the
    /// revision.
    async fn list(&self, client: &mut Client) -> Result<i64, SessionEnd> {
        let started = Instant::now();
        let read = crate::pages::list(&mut crate::client::kv(client), &self.keys.all(), 0).await?;
        let revision = read.revision;
        let listing: Vec<(Vec<u8>, Vec<u8>)> = read
            .kvs
            .into_iter()
            .map(etcd_client::KeyValue::into_key_value)
            .collect();
        let changes = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.diff(&listing)
        };
        let (read, count) = (started.elapsed(), changes.len());
        self.apply(changes).await?;
        tracing::info!(
            revision,
            keys = listing.len(),
            changes = count,
            read = ?read,
            applied = ?(started.elapsed() - read),
            "etcd catalog listed"
        );
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
            .with_progress_notify()
            // A response above etcd's request limit comes in parts, each below MAX_MESSAGE;
            // the events of each part are applied in order like any others.
            .with_fragment();
        let mut stream = crate::client::watcher(client)
            .watch(self.keys.all(), Some(options))
            .await?;
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
            self.apply(changes).await?;
            if let Some(h) = resp.header() {
                self.status.set_connected(h.revision());
            }
        }
    }

    /// Apply `changes` in order. They are decoded on the blocking pool first: an app is
    /// validated by the config rules, and 20,000 of them took seconds (debug build) on the
    /// node's single control thread, starving its lease keep-alives and `/healthz`. The state
    /// is locked only to put the decoded entries in.
    async fn apply(&self, changes: Vec<Change>) -> Result<(), SessionEnd> {
        if changes.is_empty() {
            return Ok(());
        }
        let keys = self.keys.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            changes
                .into_iter()
                .map(|c| c.decode(&keys))
                .collect::<Vec<_>>()
        })
        .await?;
        let changed = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.next_batch();
            decoded
                .into_iter()
                .fold(false, |changed, c| state.apply_decoded(c) | changed)
        };
        if changed {
            self.version.send_modify(|v| *v += 1);
        }
        Ok(())
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
