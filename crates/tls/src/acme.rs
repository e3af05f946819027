//! Automatic certificates with ACME (RFC 8555) and the TLS-ALPN-01 challenge (RFC 8737), for a
//! single node whose state lives in `[acme] state_dir` (docs/acme.md).
//!
//! - [`plan`]: pure decisions: which hostnames need a certificate, renewal time, backoff.
//! - [`state`]: the state directory (account, chains, keys, status), written atomically.
//! - [`challenge`]: pending challenge certificates, served by [`crate::TlsServer`] to
//!   connections offering `acme-tls/1`.
//! - [`order`]: one order with instant-acme.
//! - [`manager`]: the task that orders, renews and backs off, feeding [`crate::DynamicCerts`].

pub mod challenge;
pub mod manager;
pub mod order;
pub mod plan;
pub mod state;

pub use challenge::{challenge_cert, Challenges};
pub use manager::{AcmeManager, AcmeSettings, CertInfo};
pub use order::{AccountSettings, OrderError};
pub use plan::{wanted_hostnames, Backoff};
pub use state::{StateDir, Status, StoredCert};
