//! ACME state in etcd, for a cluster (docs/acme.md, "A cluster"): the account, the certificates
//! and the status of every hostname, the one-issuer-per-hostname lock, and the challenge
//! certificates every edge answers validation with. Private keys are sealed with the cluster
//! secret key (`[catalog] secret_key_file`).
//!
//! | key (under the prefix) | lease | value |
//! |---|---|---|
//! | `acme/account` | none | `{"schema":1,"credentials":SEALED}` |
//! | `certs/<host>` | none | `{"schema":1,"chain_pem":"...","key":SEALED}` |
//! | `acme/status/<host>` | none | `{"schema":1,"status":{"state":"pending"\|"valid"\|"failing",...}}` |
//! | `acme/locks/<host>` | the holder's lock lease (10 s) | `{"schema":1,"node":"<id>","since":UNIX}` |
//! | `acme/challenges/<host>` | the same lease | `{"schema":1,"cert_der":"BASE64","key":SEALED}` |
//! | `acme/challenge-acks/<host>/<node>` | the challenge's lease | `{"schema":1,"revision":N}`: node has installed the challenge of revision N |

use crate::client::connect;
use crate::keys::Keys;
use crate::pages;
use crate::values::{schema_of, DecodeError, SCHEMA};
use anyedge_config::EtcdConfig;
use anyedge_tls::acme::{
    challenge_key, BoxFuture, CertStorage, ChallengePem, Challenges, IssuerLock, Locking, Sealed,
    SecretKey, Status, StoredCert,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use etcd_client::{
    Client, Compare, CompareOp, Event, EventType, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// The lock's lease: a holder that dies releases it within this long.
pub const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long the issuer waits for every registered node to acknowledge a published challenge
/// before it tells the CA to validate anyway (a node without `[acme]` never acknowledges).
const CHALLENGE_ACK_TIMEOUT: Duration = Duration::from_secs(3);
const CHALLENGE_ACK_POLL: Duration = Duration::from_millis(25);
const RECONNECT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
struct CertValue {
    schema: u32,
    chain_pem: String,
    key: Sealed,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccountValue {
    schema: u32,
    credentials: Sealed,
}

#[derive(Debug, Serialize, Deserialize)]
struct StatusValue {
    schema: u32,
    status: Status,
}

#[derive(Debug, Serialize, Deserialize)]
struct LockValue {
    schema: u32,
    node: String,
    since: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct AckValue {
    schema: u32,
    revision: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChallengeValue {
    schema: u32,
    cert_der: String,
    key: Sealed,
}

/// Decode a value leniently: a schema number is required, unknown fields are ignored.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    schema_of(&v)?;
    Ok(serde_json::from_value(v)?)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn etcd(e: etcd_client::Error) -> io::Error {
    io::Error::other(format!("etcd: {e}"))
}

/// The ACME keys under one prefix.
#[derive(Debug, Clone)]
pub struct AcmeKeys {
    /// With a trailing `/`.
    prefix: String,
}

impl AcmeKeys {
    pub fn new(keys: &Keys) -> AcmeKeys {
        AcmeKeys { prefix: keys.all() }
    }
    pub fn account(&self) -> String {
        format!("{}acme/account", self.prefix)
    }
    pub fn certs(&self) -> String {
        format!("{}certs/", self.prefix)
    }
    pub fn cert(&self, host: &str) -> String {
        format!("{}{host}", self.certs())
    }
    pub fn statuses(&self) -> String {
        format!("{}acme/status/", self.prefix)
    }
    pub fn status(&self, host: &str) -> String {
        format!("{}{host}", self.statuses())
    }
    pub fn locks(&self) -> String {
        format!("{}acme/locks/", self.prefix)
    }
    pub fn lock(&self, host: &str) -> String {
        format!("{}{host}", self.locks())
    }
    pub fn challenges(&self) -> String {
        format!("{}acme/challenges/", self.prefix)
    }
    pub fn challenge(&self, host: &str) -> String {
        format!("{}{host}", self.challenges())
    }
    /// Where nodes acknowledge the challenge of `host`, one key each.
    pub fn challenge_acks(&self, host: &str) -> String {
        format!("{}acme/challenge-acks/{host}/", self.prefix)
    }
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }
}

/// The hostname a key under `dir` names (one segment, non-empty).
fn host_of<'a>(key: &'a [u8], dir: &str) -> Option<&'a str> {
    let host = std::str::from_utf8(key).ok()?.strip_prefix(dir)?;
    (!host.is_empty() && !host.contains('/')).then_some(host)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Issuance state in etcd ([`CertStorage`]), for one node.
pub struct EtcdCertStorage {
    cfg: EtcdConfig,
    keys: AcmeKeys,
    secret: Arc<SecretKey>,
    /// This node's id, written into the locks it holds.
    node: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for EtcdCertStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCertStorage")
            .field("endpoints", &self.cfg.endpoints)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl EtcdCertStorage {
    pub fn new(cfg: EtcdConfig, keys: &Keys, secret: SecretKey, node: &str) -> EtcdCertStorage {
        EtcdCertStorage {
            cfg,
            keys: AcmeKeys::new(keys),
            secret: Arc::new(secret),
            node: node.to_string(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// A connection, made on first use (etcd-client reconnects by itself afterwards).
    async fn client(&self) -> io::Result<Client> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.cfg).await.map_err(io::Error::other)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let resp = self.client().await?.get(key, None).await.map_err(etcd)?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> io::Result<()> {
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        self.client()
            .await?
            .put(key, value, options)
            .await
            .map_err(etcd)?;
        Ok(())
    }

    fn open_challenge(&self, key: &str, bytes: &[u8]) -> Result<ChallengePem, String> {
        let value: ChallengeValue = decode(bytes).map_err(|e| e.to_string())?;
        let cert_der = B64.decode(&value.cert_der).map_err(|e| e.to_string())?;
        let key_der = self
            .secret
            .open(key, &value.key)
            .map_err(|e| e.to_string())?;
        Ok(ChallengePem { cert_der, key_der })
    }

    /// Follow `certs/` and `acme/challenges/`: put every published challenge into
    /// `challenges` (so this edge answers validations of orders run elsewhere), and send the
    /// hostname of every stored certificate that changed. Runs until the receiver is dropped.
    pub fn follow(
        self: &Arc<Self>,
        challenges: Arc<Challenges>,
    ) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut ours = BTreeSet::new();
            loop {
                let end = this.follow_session(&challenges, &tx, &mut ours).await;
                if tx.is_closed() {
                    return;
                }
                tracing::warn!(error = %end, "ACME catalog watch ended; reconnecting");
                tokio::time::sleep(RECONNECT).await;
            }
        });
        (task, rx)
    }

    /// One session of [`follow`](Self::follow): list, then watch from the listing's revision.
    /// Returns why it ended.
    async fn follow_session(
        &self,
        challenges: &Challenges,
        tx: &mpsc::UnboundedSender<String>,
        ours: &mut BTreeSet<String>,
    ) -> io::Error {
        let mut client = match self.client().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let prefix = self.keys.prefix.clone();
        let revision = match self.relist(&mut client, challenges, tx, ours).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_progress_notify()
            .with_fragment();
        let mut watcher = crate::client::watcher(&client);
        let mut stream = match watcher.watch(prefix.as_str(), Some(options)).await {
            Ok(w) => w,
            Err(e) => return etcd(e),
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                () = tx.closed() => return io::Error::other("stopped"),
            };
            let resp = match message {
                Ok(Some(r)) => r,
                Ok(None) => return io::Error::other("the watch stream ended"),
                Err(e) => return etcd(e),
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                return io::Error::other("the watch was cancelled or compacted: relisting");
            }
            for event in resp.events() {
                self.on_event(&mut client, event, challenges, tx, ours)
                    .await;
            }
        }
    }

    /// List the prefix: install every published challenge (and acknowledge it), send every
    /// stored certificate's hostname, and take out the challenges an earlier session
    /// installed that are gone. Returns the listing's revision.
    async fn relist(
        &self,
        client: &mut Client,
        challenges: &Challenges,
        tx: &mpsc::UnboundedSender<String>,
        ours: &mut BTreeSet<String>,
    ) -> io::Result<i64> {
        let listing = pages::list(&mut crate::client::kv(client), &self.keys.prefix, 0)
            .await
            .map_err(io::Error::other)?;
        let revision = listing.revision;
        // The listing replaces what an earlier session installed.
        let mut seen = BTreeSet::new();
        for kv in &listing.kvs {
            if let Some(host) = self.on_put(kv.key(), kv.value(), challenges, tx) {
                self.ack(client, &host, kv.mod_revision(), kv.lease()).await;
                seen.insert(host);
            }
        }
        for gone in ours.difference(&seen) {
            challenges.remove(gone);
        }
        *ours = seen;
        Ok(revision)
    }

    /// One watched change: a put as in the listing, a deleted challenge taken out.
    async fn on_event(
        &self,
        client: &mut Client,
        event: &Event,
        challenges: &Challenges,
        tx: &mpsc::UnboundedSender<String>,
        ours: &mut BTreeSet<String>,
    ) {
        let Some(kv) = event.kv() else { return };
        match event.event_type() {
            EventType::Put => {
                if let Some(host) = self.on_put(kv.key(), kv.value(), challenges, tx) {
                    self.ack(client, &host, kv.mod_revision(), kv.lease()).await;
                    ours.insert(host);
                }
            }
            EventType::Delete => {
                if let Some(host) = host_of(kv.key(), &self.keys.challenges()) {
                    challenges.remove(host);
                    ours.remove(host);
                }
            }
        }
    }

    /// Tell the issuer this node answers the challenge of `host` (revision `revision`) now:
    /// under the challenge's own lease, so acknowledgements go with it.
    async fn ack(&self, client: &mut Client, host: &str, revision: i64, lease: i64) {
        let key = format!("{}{}", self.keys.challenge_acks(host), self.node);
        let value = encode(&AckValue {
            schema: SCHEMA,
            revision,
        });
        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        if let Err(e) = client.put(key, value, options).await {
            tracing::info!(hostname = host, error = %e, "cannot acknowledge the published challenge");
        }
    }

    /// After publishing the challenge of `host` at `revision`: wait until every registered
    /// node has acknowledged it, or [`CHALLENGE_ACK_TIMEOUT`].
    async fn await_acks(&self, host: &str, revision: i64) {
        let deadline = tokio::time::Instant::now() + CHALLENGE_ACK_TIMEOUT;
        let mut missing = Vec::new();
        loop {
            match self.unacknowledged(host, revision).await {
                Ok(m) if m.is_empty() => {
                    tracing::debug!(hostname = host, "every node answers the challenge");
                    return;
                }
                Ok(m) => missing = m,
                Err(e) => {
                    tracing::debug!(hostname = host, error = %e, "cannot read acknowledgements")
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(hostname = host, missing = ?missing, "validating before every node acknowledged the challenge (a node without [acme] never does)");
                return;
            }
            tokio::time::sleep(CHALLENGE_ACK_POLL).await;
        }
    }

    /// The registered nodes that have not acknowledged the challenge of `host` at `revision`.
    async fn unacknowledged(&self, host: &str, revision: i64) -> io::Result<Vec<String>> {
        let mut kv = crate::client::kv(&self.client().await?);
        let nodes = pages::list(&mut kv, &self.keys.nodes(), 0)
            .await
            .map_err(io::Error::other)?;
        let dir = self.keys.challenge_acks(host);
        let acks = pages::list(&mut kv, &dir, nodes.revision)
            .await
            .map_err(io::Error::other)?;
        let acked: BTreeSet<&str> = acks
            .kvs
            .iter()
            .filter(|kv| decode::<AckValue>(kv.value()).is_ok_and(|a| a.revision == revision))
            .filter_map(|kv| host_of(kv.key(), &dir))
            .collect();
        Ok(nodes
            .kvs
            .iter()
            .filter_map(|kv| host_of(kv.key(), &self.keys.nodes()))
            .filter(|n| !acked.contains(n))
            .map(str::to_string)
            .collect())
    }

    /// A key was put: a challenge is installed (its hostname returned), a certificate's
    /// hostname is sent on. Anything else is ignored.
    fn on_put(
        &self,
        key: &[u8],
        value: &[u8],
        challenges: &Challenges,
        tx: &mpsc::UnboundedSender<String>,
    ) -> Option<String> {
        if let Some(host) = host_of(key, &self.keys.certs()) {
            let _ = tx.send(host.to_string());
            return None;
        }
        let host = host_of(key, &self.keys.challenges())?;
        let parts = match self.open_challenge(&self.keys.challenge(host), value) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(hostname = host, error = %e, "published challenge unusable; skipped");
                return None;
            }
        };
        match challenge_key(&parts) {
            Ok(key) => {
                tracing::debug!(
                    hostname = host,
                    "challenge published by the issuing node installed"
                );
                challenges.insert(host, key);
                Some(host.to_string())
            }
            Err(e) => {
                tracing::warn!(hostname = host, error = %e, "published challenge key unusable; skipped");
                None
            }
        }
    }

    async fn try_lock(&self, host: &str) -> io::Result<Locking> {
        let mut client = self.client().await?;
        let ttl = i64::try_from(LOCK_TTL.as_secs()).unwrap_or(10);
        let lease = client.lease_grant(ttl, None).await.map_err(etcd)?.id();
        let key = self.keys.lock(host);
        let value = encode(&LockValue {
            schema: SCHEMA,
            node: self.node.clone(),
            since: unix_now(),
        });
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = match client.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                let _ = client.lease_revoke(lease).await;
                return Err(etcd(e));
            }
        };
        if !resp.succeeded() {
            let _ = client.lease_revoke(lease).await;
            let holder = resp
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                    _ => None,
                })
                .and_then(|v| decode::<LockValue>(&v).ok())
                .map_or_else(|| "?".to_string(), |l| l.node);
            return Ok(Locking::Busy { holder });
        }
        let (release, released) = oneshot::channel();
        tokio::spawn(keep_lock(client, lease, host.to_string(), released));
        Ok(Locking::Won(IssuerLock {
            lease: Some(lease),
            release: Some(release),
        }))
    }
}

/// Keep the lock's lease alive until `released` fires or its sender is dropped, then revoke
/// it (the lock and the challenge under it go with it).
async fn keep_lock(mut client: Client, lease: i64, host: String, released: oneshot::Receiver<()>) {
    let mut released = released;
    let kept = async {
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
        let mut tick = tokio::time::interval(LOCK_TTL / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            keeper.keep_alive().await?;
            match answers.message().await? {
                Some(a) if a.ttl() > 0 => {}
                _ => return Ok::<(), etcd_client::Error>(()),
            }
        }
    };
    tokio::select! {
        _ = &mut released => {}
        result = kept => {
            tracing::warn!(hostname = %host, result = ?result.err(), "the issuance lock's lease was lost: another node may take over");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
}

impl CertStorage for EtcdCertStorage {
    fn describe(&self) -> String {
        format!("etcd {}", self.cfg.endpoints.join(","))
    }

    fn read_account(&self) -> BoxFuture<'_, io::Result<Option<String>>> {
        Box::pin(async move {
            let key = self.keys.account();
            let Some(bytes) = self.get(&key).await? else {
                return Ok(None);
            };
            let value: AccountValue = decode(&bytes).map_err(invalid)?;
            let plain = self
                .secret
                .open(&key, &value.credentials)
                .map_err(invalid)?;
            String::from_utf8(plain).map(Some).map_err(invalid)
        })
    }

    fn write_account<'a>(&'a self, json: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let key = self.keys.account();
            let credentials = self.secret.seal(&key, json.as_bytes()).map_err(invalid)?;
            let value = encode(&AccountValue {
                schema: SCHEMA,
                credentials,
            });
            self.put(&key, value, None).await
        })
    }

    fn read_cert<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Option<StoredCert>>> {
        Box::pin(async move {
            let key = self.keys.cert(host);
            let Some(bytes) = self.get(&key).await? else {
                return Ok(None);
            };
            let value: CertValue = decode(&bytes).map_err(invalid)?;
            let plain = self.secret.open(&key, &value.key).map_err(invalid)?;
            let key_pem = String::from_utf8(plain).map_err(invalid)?;
            Ok(Some(StoredCert {
                chain_pem: value.chain_pem,
                key_pem,
            }))
        })
    }

    fn write_cert<'a>(
        &'a self,
        host: &'a str,
        cert: &'a StoredCert,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let key = self.keys.cert(host);
            let sealed = self
                .secret
                .seal(&key, cert.key_pem.as_bytes())
                .map_err(invalid)?;
            let value = encode(&CertValue {
                schema: SCHEMA,
                chain_pem: cert.chain_pem.clone(),
                key: sealed,
            });
            self.put(&key, value, None).await
        })
    }

    fn read_status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Option<Status>>> {
        Box::pin(async move {
            let Some(bytes) = self.get(&self.keys.status(host)).await? else {
                return Ok(None);
            };
            let value: StatusValue = decode(&bytes).map_err(invalid)?;
            Ok(Some(value.status))
        })
    }

    fn write_status<'a>(
        &'a self,
        host: &'a str,
        status: &'a Status,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let value = encode(&StatusValue {
                schema: SCHEMA,
                status: status.clone(),
            });
            self.put(&self.keys.status(host), value, None).await
        })
    }

    fn lock<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Locking>> {
        Box::pin(self.try_lock(host))
    }

    fn publish_challenge<'a>(
        &'a self,
        lock: &'a IssuerLock,
        host: &'a str,
        challenge: &'a ChallengePem,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let key = self.keys.challenge(host);
            let sealed = self
                .secret
                .seal(&key, &challenge.key_der)
                .map_err(invalid)?;
            let value = encode(&ChallengeValue {
                schema: SCHEMA,
                cert_der: B64.encode(&challenge.cert_der),
                key: sealed,
            });
            let options = lock.lease.map(|l| PutOptions::new().with_lease(l));
            let put = self
                .client()
                .await?
                .put(key.as_str(), value, options)
                .await
                .map_err(etcd)?;
            let revision = put.header().map_or(0, |h| h.revision());
            self.await_acks(host, revision).await;
            Ok(())
        })
    }

    fn withdraw_challenge<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.client()
                .await?
                .delete(self.keys.challenge(host), None)
                .await
                .map_err(etcd)?;
            Ok(())
        })
    }
}

/// What the catalog says of one hostname, for `anyedge certs list --etcd` (no secret needed:
/// the chain is stored in clear).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostListing {
    pub chain_pem: Option<String>,
    pub status: Option<Status>,
    /// The node holding the issuance lock now.
    pub lock_holder: Option<String>,
}

/// Every hostname with a certificate, a status or a lock in the catalog (read page by page, all
/// at one revision).
pub async fn list_hosts(
    client: &mut Client,
    keys: &Keys,
) -> Result<BTreeMap<String, HostListing>, etcd_client::Error> {
    let keys = AcmeKeys::new(keys);
    let mut kv = crate::client::kv(client);
    let mut out: BTreeMap<String, HostListing> = BTreeMap::new();
    let mut revision = 0;
    for dir in [keys.certs(), keys.statuses(), keys.locks()] {
        let listing = pages::list(&mut kv, &dir, revision)
            .await
            .map_err(|e| e.source)?;
        revision = listing.revision;
        for kv in &listing.kvs {
            let Some(host) = host_of(kv.key(), &dir) else {
                continue;
            };
            let entry = out.entry(host.to_string()).or_default();
            if dir == keys.certs() {
                entry.chain_pem = decode::<CertValue>(kv.value()).ok().map(|v| v.chain_pem);
            } else if dir == keys.statuses() {
                entry.status = decode::<StatusValue>(kv.value()).ok().map(|v| v.status);
            } else {
                entry.lock_holder = decode::<LockValue>(kv.value()).ok().map(|v| v.node);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_are_decoded_leniently_and_need_a_schema() {
        let lock: LockValue =
            decode(br#"{"schema":2,"node":"edge-a","since":5,"later":"field"}"#).unwrap();
        assert_eq!(lock.node, "edge-a");
        assert!(decode::<LockValue>(br#"{"node":"edge-a","since":5}"#).is_err());
        let status: StatusValue =
            decode(br#"{"schema":1,"status":{"state":"pending","since":3,"x":1}}"#).unwrap();
        assert_eq!(status.status, Status::Pending { since: 3 });
    }

    #[test]
    fn keys_are_under_the_prefix_and_hostnames_come_back() {
        let keys = AcmeKeys::new(&Keys::default());
        assert_eq!(keys.cert("a.test"), "/anyedge/certs/a.test");
        assert_eq!(keys.lock("a.test"), "/anyedge/acme/locks/a.test");
        assert_eq!(keys.challenge("a.test"), "/anyedge/acme/challenges/a.test");
        assert_eq!(keys.account(), "/anyedge/acme/account");
        assert_eq!(
            host_of(b"/anyedge/acme/challenges/a.test", &keys.challenges()),
            Some("a.test")
        );
        assert_eq!(host_of(b"/anyedge/certs/", &keys.certs()), None);
        assert_eq!(host_of(b"/anyedge/certs/a/b", &keys.certs()), None);
        assert_eq!(host_of(b"/anyedge/apps/a", &keys.certs()), None);
    }
}
