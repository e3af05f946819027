//! Automatic certificates with ACME (RFC 8555) and the TLS-ALPN-01 challenge (RFC 8737), with the
//! state in `[acme] state_dir` (one node) or in etcd (a cluster) (docs/acme.md).
//!
//! - [`plan`]: pure decisions: which hostnames need a certificate, renewal time, backoff.
//! - [`state`]: the state directory (account, chains, keys, status), written atomically.
//! - [`storage`]: where that state lives: the state directory, or (a cluster) etcd.
//! - [`secret`]: the cluster secret key that seals private keys kept in etcd.
//! - [`challenge`]: pending challenge certificates, served by [`crate::TlsServer`] to
//!   connections offering `acme-tls/1`.
//! - [`order`]: one order with instant-acme.
//! - [`manager`]: the task that orders, renews and backs off, feeding [`crate::DynamicCerts`].

pub mod challenge;
pub mod manager;
pub mod order;
pub mod plan;
pub mod secret;
pub mod state;
pub mod storage;

pub use challenge::{challenge_cert, challenge_cert_parts, challenge_key, Challenges};
pub use manager::{AcmeManager, AcmeSettings, CertInfo, Storage};
pub use order::{AccountSettings, OrderError};
pub use plan::{wanted_hostnames, Backoff, WantedHostnames};
pub use secret::{Sealed, SecretError, SecretKey};
pub use state::{StateDir, Status, StoredCert};
pub use storage::{BoxFuture, CertStorage, ChallengePem, IssuerLock, Locking};
