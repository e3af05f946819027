//! TLS termination for the edge: certificates from config, SNI resolution, and handshakes
//! bounded in time and in number.
//!
//! The pieces, from the outside in:
//! - [`CertStore`]: the static certificates of every app (`[[apps.certificates]]`), loaded from
//!   PEM once per snapshot and indexed by the names they serve. A pair that fails to load is
//!   reported with its paths and skipped; the others serve.
//! - [`DynamicCerts`]: names added at run time (ACME), shared across snapshots.
//! - [`SniResolver`]: a ClientHello's server name to a certificate: static exact, static
//!   wildcard, dynamic, then an optional default.
//! - [`TlsShared`] (one per process: session cache and ticket keys, so that resumption survives
//!   reloads) and [`TlsServer`] (one per snapshot: the prebuilt `ServerConfig`s).
//! - [`TlsServer::accept`]: read the ClientHello, refuse a name we have no certificate for before
//!   answering anything, then finish the handshake with the right config.
//!
//! One crypto provider only: ring (PITFALLS.md). Configs are built with
//! `ServerConfig::builder_with_provider`, so nothing here depends on the process default; the
//! binary still calls [`install_crypto_provider`] for code that does.

pub mod acme;
mod certs;
pub mod cluster_ca;
mod error;
mod resolver;
mod server;
mod store;
mod tickets;

pub use certs::{load_key_pair, parse_key_pair, KeyPairError, ParsedKeyPair};
pub use error::TlsError;
pub use resolver::{DynamicCerts, SniResolver};
pub use server::{
    Accepted, HandshakeLimits, TlsServer, TlsShared, ALPN_ACME_TLS, ALPN_H2, ALPN_HTTP11,
};
pub use store::{CertError, CertStore};

pub use rustls;
pub use rustls::sign::CertifiedKey;

use rustls::crypto::CryptoProvider;
use std::sync::{Arc, OnceLock};

/// Install ring as the process-wide default rustls provider. Idempotent: a provider installed
/// earlier (by an earlier call, or by a test harness) is left in place.
pub fn install_crypto_provider() {
    // `Err` only means a default is already installed; which one is not ours to change here.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider every config and key of this crate is built with.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
