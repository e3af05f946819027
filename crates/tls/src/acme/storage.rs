//! Where issuance keeps its state: the account, the certificates, the status per hostname, the
//! one-issuer-per-hostname lock and the published challenges. A single node keeps them in its
//! state directory ([`StateDir`]; the lock is always won, challenges stay local); a cluster
//! keeps them in etcd (`anyedge-store`'s `EtcdCertStorage`), so that one node orders per
//! hostname, every edge answers the validation, and every edge serves the result.

use super::state::{StateDir, Status, StoredCert};
use std::future::Future;
use std::io;
use std::pin::Pin;

/// A boxed future, so that [`CertStorage`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The right to order for one hostname, while held. Dropping it releases the lock (etcd: the
/// lease it lives under is revoked, which also withdraws the challenges published under it).
#[derive(Debug, Default)]
pub struct IssuerLock {
    /// The etcd lease the lock key lives under (challenges are published under it too).
    pub lease: Option<i64>,
    /// Dropped with the lock: tells its keeper to release.
    pub release: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The outcome of trying to take the lock of a hostname.
#[derive(Debug)]
pub enum Locking {
    Won(IssuerLock),
    /// Another node orders for this hostname now.
    Busy {
        holder: String,
    },
}

/// A challenge certificate and its key, as published to the other edges.
#[derive(Debug, Clone)]
pub struct ChallengePem {
    pub cert_der: Vec<u8>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

/// The state of issuance. Every method may do I/O; errors are reported, never panics.
pub trait CertStorage: Send + Sync + std::fmt::Debug {
    /// Where the state lives, for logs.
    fn describe(&self) -> String;
    /// The stored account credentials (JSON), if any.
    fn read_account(&self) -> BoxFuture<'_, io::Result<Option<String>>>;
    fn write_account<'a>(&'a self, json: &'a str) -> BoxFuture<'a, io::Result<()>>;
    fn read_cert<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Option<StoredCert>>>;
    fn write_cert<'a>(
        &'a self,
        host: &'a str,
        cert: &'a StoredCert,
    ) -> BoxFuture<'a, io::Result<()>>;
    fn read_status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Option<Status>>>;
    fn write_status<'a>(
        &'a self,
        host: &'a str,
        status: &'a Status,
    ) -> BoxFuture<'a, io::Result<()>>;
    /// Try to become the only node ordering for `host`.
    fn lock<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Locking>>;
    /// Make the challenge for `host` answerable by every edge (the local map is filled by
    /// the order itself). Returns once it is reasonably sure the others have it.
    fn publish_challenge<'a>(
        &'a self,
        lock: &'a IssuerLock,
        host: &'a str,
        challenge: &'a ChallengePem,
    ) -> BoxFuture<'a, io::Result<()>>;
    /// Withdraw what [`CertStorage::publish_challenge`] published.
    fn withdraw_challenge<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<()>>;
}

/// A single node: everything in the state directory; no other node to exclude or to tell.
impl CertStorage for StateDir {
    fn describe(&self) -> String {
        self.root().display().to_string()
    }
    fn read_account(&self) -> BoxFuture<'_, io::Result<Option<String>>> {
        Box::pin(async move { StateDir::read_account(self) })
    }
    fn write_account<'a>(&'a self, json: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move { StateDir::write_account(self, json) })
    }
    fn read_cert<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Option<StoredCert>>> {
        Box::pin(async move { StateDir::read_cert(self, host) })
    }
    fn write_cert<'a>(
        &'a self,
        host: &'a str,
        cert: &'a StoredCert,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move { StateDir::write_cert(self, host, cert) })
    }
    fn read_status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Option<Status>>> {
        Box::pin(async move { StateDir::read_status(self, host) })
    }
    fn write_status<'a>(
        &'a self,
        host: &'a str,
        status: &'a Status,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move { StateDir::write_status(self, host, status) })
    }
    fn lock<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, io::Result<Locking>> {
        Box::pin(async move { Ok(Locking::Won(IssuerLock::default())) })
    }
    fn publish_challenge<'a>(
        &'a self,
        _lock: &'a IssuerLock,
        _host: &'a str,
        _challenge: &'a ChallengePem,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move { Ok(()) })
    }
    fn withdraw_challenge<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move { Ok(()) })
    }
}
