//! The task that keeps every wanted hostname supplied with a certificate: load what the storage
//! holds, order what is missing, renew what is due, back off after failures, and put each new
//! chain into [`DynamicCerts`] the moment it arrives. In a cluster only the holder of a
//! hostname's lock orders; the others take the stored result (told by the storage's change
//! feed, or found when they next try).

use super::challenge::Challenges;
use super::order::{self, AccountSettings, ChallengeSink, OrderError};
use super::plan::{renew_at, unix, unix_secs, Backoff};
use super::state::{Status, StoredCert};
use super::storage::{CertStorage, Locking};
use crate::certs::parse_key_pair;
use crate::resolver::DynamicCerts;
use anyedge_telemetry::Metrics;
use rustls::sign::CertifiedKey;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// An order that takes longer than this is abandoned and counts as a failure.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest single sleep, so that a jump of the wall clock is noticed within the hour.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How soon a node that found another holding a hostname's lock looks again (the change feed
/// usually brings the result sooner).
const LOCK_RETRY: Duration = Duration::from_secs(2);
/// How soon a node that could not reach the storage to take a lock tries again.
const STORAGE_RETRY: Duration = Duration::from_secs(10);
/// How long a starting node waits for its stored certificates (etcd may be away); the rest
/// are loaded by the task.
const FIRST_LOAD: Duration = Duration::from_secs(5);

/// What the ACME task needs from the config.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub account: AccountSettings,
    pub backoff: Backoff,
}

impl AcmeSettings {
    pub fn from_config(acme: &anyedge_config::Acme) -> AcmeSettings {
        AcmeSettings {
            account: AccountSettings {
                directory: acme.directory.clone(),
                contact: acme.contact.clone(),
                ca_roots: acme.ca_roots.clone(),
            },
            backoff: Backoff {
                min: acme.retry_min,
                max: acme.retry_max,
            },
        }
    }
}

/// Where the task keeps its state, and (a cluster) the hostnames whose stored certificate
/// another node changed.
#[derive(Debug)]
pub struct Storage {
    pub store: Arc<dyn CertStorage>,
    pub changed: Option<mpsc::UnboundedReceiver<String>>,
}

/// The running ACME task of a node. Dropping it stops the task.
#[derive(Debug)]
pub struct AcmeManager {
    wanted: watch::Sender<BTreeSet<String>>,
    task: tokio::task::JoinHandle<()>,
    dynamic: Arc<DynamicCerts>,
    challenges: Arc<Challenges>,
}

impl AcmeManager {
    /// Serve the stored certificates of `hostnames` (before returning: a node serves them from
    /// its first connection), then start the task that orders and renews on `runtime` (the
    /// node's control runtime). Reads a state directory: call it where blocking is fine.
    pub async fn start(
        settings: AcmeSettings,
        storage: Storage,
        dynamic: Arc<DynamicCerts>,
        challenges: Arc<Challenges>,
        metrics: Arc<Metrics>,
        hostnames: BTreeSet<String>,
        runtime: &tokio::runtime::Handle,
    ) -> AcmeManager {
        let mut driver = Driver {
            state: storage.store,
            settings,
            dynamic: dynamic.clone(),
            challenges: challenges.clone(),
            metrics,
            account: None,
            fresh_account: false,
            hosts: BTreeMap::new(),
        };
        if tokio::time::timeout(FIRST_LOAD, driver.sync(&hostnames))
            .await
            .is_err()
        {
            tracing::warn!(storage = %driver.state.describe(), "stored certificates not all loaded in {FIRST_LOAD:?}: the rest follow");
        }
        let (wanted, rx) = watch::channel(hostnames);
        let task = runtime.spawn(driver.run(rx, storage.changed));
        AcmeManager {
            wanted,
            task,
            dynamic,
            challenges,
        }
    }

    /// The hostnames to hold certificates for from now on (see `wanted_hostnames`): new ones
    /// are ordered, removed ones stop being served and renewed.
    pub fn set_hostnames(&self, hostnames: BTreeSet<String>) {
        self.wanted.send_if_modified(|current| {
            // Removed names stop being served now, not when the task is next free (it may be
            // in the middle of another name's order); the task forgets them after that.
            for gone in current.difference(&hostnames) {
                self.dynamic.remove(gone);
                self.challenges.remove(gone);
            }
            let changed = *current != hostnames;
            *current = hostnames;
            changed
        });
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for AcmeManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A hostname's issuance status as the dashboard shows it.
fn host_state(status: &Status) -> anyedge_telemetry::AcmeHostState {
    let (state, error, failures, next_attempt) = match status {
        Status::Pending { .. } => ("pending", None, 0, None),
        Status::Valid { .. } => ("valid", None, 0, None),
        Status::Failing {
            error,
            failures,
            next_attempt,
            ..
        } => (
            "failing",
            Some(error.clone()),
            *failures,
            Some(*next_attempt),
        ),
    };
    anyedge_telemetry::AcmeHostState {
        state,
        error,
        failures,
        next_attempt,
    }
}

/// What the task knows of one hostname.
#[derive(Debug)]
struct Host {
    /// When to order next (now, at renewal time, or after a backoff).
    due: SystemTime,
    /// Consecutive failed orders.
    failures: u32,
    /// notAfter of the certificate serving now.
    not_after: Option<i64>,
}

struct Driver {
    settings: AcmeSettings,
    state: Arc<dyn CertStorage>,
    dynamic: Arc<DynamicCerts>,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
    /// Made (or restored) on first use; dropped after a failure so the next try starts afresh.
    account: Option<instant_acme::Account>,
    /// The CA said it does not know the stored account: make a new one next time.
    fresh_account: bool,
    hosts: BTreeMap<String, Host>,
}

impl Driver {
    async fn run(
        mut self,
        mut wanted: watch::Receiver<BTreeSet<String>>,
        mut changed: Option<mpsc::UnboundedReceiver<String>>,
    ) {
        loop {
            let names = wanted.borrow_and_update().clone();
            self.sync(&names).await;
            let now = SystemTime::now();
            let next = self.hosts.iter().min_by_key(|(_, h)| h.due);
            if let Some((name, host)) = next {
                if host.due <= now {
                    let name = name.clone();
                    self.attempt(&name, &wanted).await;
                    continue;
                }
            }
            let wait = next
                .map(|(_, h)| h.due.duration_since(now).unwrap_or_default())
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                name = next_change(&mut changed) => match name {
                    Some(name) if self.hosts.contains_key(&name) => {
                        self.adopt_stored(&name).await;
                    }
                    Some(_) => {}
                    None => changed = None,
                },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Serve the stored certificate of `name` if it is newer than the one serving (another
    /// node issued it). True when it is good until its renewal time: nothing to order now.
    async fn adopt_stored(&mut self, name: &str) -> bool {
        let stored = match self.state.read_cert(name).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(hostname = %name, error = %e, "cannot read the stored certificate");
                return false;
            }
        };
        let Ok((key, info)) = Self::parse(&stored) else {
            return false;
        };
        let now = SystemTime::now();
        let Some(host) = self.hosts.get_mut(name) else {
            return false;
        };
        if unix(info.not_after) <= now || host.not_after.is_some_and(|n| n >= info.not_after) {
            return false;
        }
        let renew = renew_at(info.not_before, info.not_after);
        tracing::info!(hostname = %name, not_after = info.not_after, serial = %info.serial, "stored certificate taken (issued elsewhere)");
        host.not_after = Some(info.not_after);
        host.failures = 0;
        if renew > now {
            host.due = renew;
        }
        self.publish_expiries();
        self.metrics.set_acme_host(
            name,
            host_state(&Status::Valid {
                not_after: info.not_after,
                issuer: String::new(),
                serial: String::new(),
            }),
        );
        self.dynamic.insert(name, key);
        renew > now
    }

    /// Follow the wanted set: forget (and stop serving) removed names, load added ones.
    async fn sync(&mut self, wanted: &BTreeSet<String>) {
        let removed: Vec<String> = self
            .hosts
            .keys()
            .filter(|h| !wanted.contains(*h))
            .cloned()
            .collect();
        for name in &removed {
            self.hosts.remove(name);
            self.metrics.remove_acme_host(name);
            self.dynamic.remove(name);
            self.challenges.remove(name);
            tracing::info!(hostname = %name, "hostname removed: certificate no longer served or renewed");
        }
        let mut added = false;
        for name in wanted {
            if !self.hosts.contains_key(name) {
                let host = self.load(name).await;
                self.hosts.insert(name.clone(), host);
                added = true;
            }
        }
        if added || !removed.is_empty() {
            self.publish_expiries();
        }
    }

    /// A hostname's stored certificate (served at once while valid) and its pending backoff.
    async fn load(&self, name: &str) -> Host {
        let now = SystemTime::now();
        let mut host = Host {
            due: now,
            failures: 0,
            not_after: None,
        };
        match self.state.read_cert(name).await {
            Ok(Some(stored)) => match Self::parse(&stored) {
                Ok((key, info)) if unix(info.not_after) > now => {
                    self.dynamic.insert(name, key);
                    tracing::info!(hostname = %name, not_after = info.not_after, "stored certificate loaded");
                    host.due = renew_at(info.not_before, info.not_after);
                    host.not_after = Some(info.not_after);
                }
                Ok(_) => {
                    tracing::info!(hostname = %name, "stored certificate has expired; ordering a new one");
                }
                Err(e) => {
                    tracing::warn!(hostname = %name, error = %e, "stored certificate unusable; ordering a new one")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(hostname = %name, error = %e, "cannot read the stored certificate")
            }
        }
        // A failure before a restart keeps its backoff (rate-limit friendly).
        let shown = match self.state.read_status(name).await {
            Ok(Some(failing @ Status::Failing { .. })) => {
                if let Status::Failing {
                    failures,
                    next_attempt,
                    ..
                } = &failing
                {
                    host.failures = *failures;
                    host.due = host.due.max(unix(*next_attempt));
                }
                failing
            }
            _ => match host.not_after {
                Some(not_after) => Status::Valid {
                    not_after,
                    issuer: String::new(),
                    serial: String::new(),
                },
                None => Status::Pending {
                    since: unix_secs(now),
                },
            },
        };
        self.metrics.set_acme_host(name, host_state(&shown));
        host
    }

    /// The served key and the facts of a stored chain and key.
    fn parse(stored: &StoredCert) -> Result<(Arc<CertifiedKey>, CertInfo), OrderError> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let pair = parse_key_pair(stored.chain_pem.as_bytes(), stored.key_pem.as_bytes())
            .map_err(|e| OrderError::State(invalid(e.to_string())))?;
        let leaf = pair
            .key
            .cert
            .first()
            .ok_or_else(|| OrderError::State(invalid("empty chain".into())))?;
        let info = CertInfo::of(leaf).map_err(OrderError::State)?;
        Ok((pair.key, info))
    }

    /// One order for `name`, then its outcome recorded, served and scheduled.
    async fn attempt(&mut self, name: &str, wanted: &watch::Receiver<BTreeSet<String>>) {
        // Another node may have stored a newer certificate meanwhile.
        if self.adopt_stored(name).await {
            return;
        }
        let lock = match self.state.lock(name).await {
            Ok(Locking::Won(lock)) => lock,
            Ok(Locking::Busy { holder }) => {
                tracing::debug!(hostname = %name, holder = %holder, "another node is ordering this hostname");
                if let Some(host) = self.hosts.get_mut(name) {
                    host.due = SystemTime::now() + LOCK_RETRY;
                }
                return;
            }
            Err(e) => {
                tracing::warn!(hostname = %name, error = %e, retry_in = ?STORAGE_RETRY, "cannot take the issuance lock");
                if let Some(host) = self.hosts.get_mut(name) {
                    host.due = SystemTime::now() + STORAGE_RETRY;
                }
                return;
            }
        };
        // The winner checks again: the previous holder may have stored one just before
        // releasing the lock (PITFALLS.md, etcd).
        if self.adopt_stored(name).await {
            return;
        }
        let renewing = self.hosts.get(name).is_some_and(|h| h.not_after.is_some());
        let retrying = self.hosts.get(name).is_some_and(|h| h.failures > 0);
        // A retry leaves the failing status (and its error) in place until it ends.
        if !renewing && !retrying {
            let since = unix_secs(SystemTime::now());
            self.write_status(name, &Status::Pending { since }).await;
        }
        tracing::info!(hostname = %name, renewing, "ordering a certificate");
        let result = match tokio::time::timeout(ORDER_TIMEOUT, self.order(name, &lock)).await {
            Ok(result) => result,
            Err(_) => Err(OrderError::Timeout(ORDER_TIMEOUT)),
        };
        // The hostname may have been removed while the order ran.
        if !wanted.borrow().contains(name) {
            return;
        }
        match result.and_then(|stored| Ok((Self::parse(&stored)?, stored))) {
            Ok(((key, info), stored)) => {
                if let Err(e) = self.state.write_cert(name, &stored).await {
                    tracing::error!(hostname = %name, error = %e, storage = %self.state.describe(), "certificate issued but not stored: served until a restart");
                }
                self.succeeded(name, &info).await;
                self.publish_expiries();
                // Last, so that whoever sees the new certificate also sees it recorded. The
                // swap is atomic: a handshake gets the old certificate or the new one.
                self.dynamic.insert(name, key);
            }
            Err(e) => self.failed(name, &e).await,
        }
        // The lock goes only now, after the certificate (or the failing status) is stored.
        drop(lock);
    }

    async fn order(
        &mut self,
        name: &str,
        lock: &super::storage::IssuerLock,
    ) -> Result<StoredCert, OrderError> {
        let account = match &self.account {
            Some(account) => account.clone(),
            None => {
                let fresh = std::mem::take(&mut self.fresh_account);
                let account =
                    order::account(&self.settings.account, self.state.as_ref(), fresh).await?;
                self.account = Some(account.clone());
                account
            }
        };
        let sink = ChallengeSink {
            local: &self.challenges,
            storage: self.state.as_ref(),
            lock,
        };
        order::issue(&account, name, &sink).await
    }

    async fn succeeded(&mut self, name: &str, info: &CertInfo) {
        // Never order again sooner than `retry_min` after a success, whatever the certificate
        // says (a CA issuing nearly expired certificates must not make this loop).
        let due = renew_at(info.not_before, info.not_after)
            .max(SystemTime::now() + self.settings.backoff.min);
        tracing::info!(hostname = %name, not_after = info.not_after, serial = %info.serial, issuer = %info.issuer, renew_at = unix_secs(due), "certificate issued");
        if let Some(host) = self.hosts.get_mut(name) {
            *host = Host {
                due,
                failures: 0,
                not_after: Some(info.not_after),
            };
        }
        self.write_status(
            name,
            &Status::Valid {
                not_after: info.not_after,
                issuer: info.issuer.clone(),
                serial: info.serial.clone(),
            },
        )
        .await;
        self.metrics
            .node
            .acme_orders_ok
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn failed(&mut self, name: &str, error: &OrderError) {
        self.account = None;
        if error.account_is_gone() {
            tracing::warn!("the CA does not know the stored ACME account: a new one will be made");
            self.fresh_account = true;
        }
        let Some(host) = self.hosts.get_mut(name) else {
            return;
        };
        host.failures = host.failures.saturating_add(1);
        let delay = self.settings.backoff.delay(host.failures);
        host.due = SystemTime::now() + delay;
        let error = error_chain(error);
        tracing::error!(hostname = %name, error = %error, failures = host.failures, retry_in = ?delay, "certificate order failed");
        let status = Status::Failing {
            error,
            failures: host.failures,
            next_attempt: unix_secs(host.due),
            not_after: host.not_after,
        };
        self.write_status(name, &status).await;
        self.metrics
            .node
            .acme_orders_error
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn write_status(&self, name: &str, status: &Status) {
        self.metrics.set_acme_host(name, host_state(status));
        if let Err(e) = self.state.write_status(name, status).await {
            tracing::warn!(hostname = %name, error = %e, storage = %self.state.describe(), "cannot write the issuance status");
        }
    }

    fn publish_expiries(&self) {
        let expiries = self
            .hosts
            .iter()
            .filter_map(|(name, h)| Some((name.clone(), h.not_after?)))
            .collect();
        self.metrics.set_issued_cert_expiries(expiries);
    }
}

/// The next hostname from the change feed; never without one.
async fn next_change(changed: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match changed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// An error with its sources, `outer: inner: innermost` (hyper's own message alone says
/// "client error (Connect)"; the reason is further down). Repeats are skipped.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// What `anyedge certs list` and the logs say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: i64,
    pub not_after: i64,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Hexadecimal.
    pub serial: String,
}

impl CertInfo {
    pub fn of(der: &[u8]) -> std::io::Result<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let validity = cert.validity();
        Ok(CertInfo {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
        })
    }
}
