//! A certificate chain and its private key: from PEM to a `CertifiedKey`, with the DNS names it
//! serves and when it expires. Used for config files now, for ACME and the catalog later.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as RustlsError, InconsistentKeys};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use x509_parser::extensions::GeneralName;

/// A loaded certificate chain and key, ready to serve.
#[derive(Debug, Clone)]
pub struct ParsedKeyPair {
    pub key: Arc<CertifiedKey>,
    /// The DNS names of the end-entity certificate's subjectAltName, lower-cased, without a
    /// trailing dot; wildcards kept as written (`*.example.com`). May be empty.
    pub dns_names: Vec<String>,
    /// The end-entity certificate's notAfter, in unix seconds.
    pub not_after: i64,
}

/// Why a certificate and key cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum KeyPairError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("certificate file: bad PEM: {0}")]
    CertPem(pem::Error),
    #[error("certificate file: no CERTIFICATE block")]
    NoCertificate,
    #[error("key file: bad PEM: {0}")]
    KeyPem(pem::Error),
    #[error(
        "key file: no private key (PKCS#8, PKCS#1 RSA or SEC1 EC; encrypted keys are not supported)"
    )]
    NoKey,
    #[error("key file: unsupported private key: {0}")]
    UnsupportedKey(RustlsError),
    #[error("certificate file: cannot parse the first certificate: {0}")]
    BadCertificate(String),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// Only where certificates are indexed by name ([`crate::CertStore`]); a default
    /// certificate for IP-literal clients may name addresses alone.
    #[error("the certificate names no DNS name in its subjectAltName")]
    NoDnsNames,
}

/// Read a PEM certificate chain (end-entity first) and its private key from two files.
/// Blocking file I/O: call it where blocking is fine (startup, a reload task).
pub fn load_key_pair(cert: &Path, key: &Path) -> Result<ParsedKeyPair, KeyPairError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| KeyPairError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    parse_key_pair(&read(cert)?, &read(key)?)
}

/// Parse a PEM certificate chain (end-entity first) and a PEM private key (PKCS#8, PKCS#1 RSA or
/// SEC1 EC), check that they belong together, and read the names and expiry of the certificate.
pub fn parse_key_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<ParsedKeyPair, KeyPairError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(KeyPairError::CertPem)?;
    let end_entity = chain.first().ok_or(KeyPairError::NoCertificate)?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => KeyPairError::NoKey,
        e => KeyPairError::KeyPem(e),
    })?;
    let (dns_names, not_after) = names_and_expiry(end_entity)?;
    let signing_key = crate::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(KeyPairError::UnsupportedKey)?;
    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        // `Unknown`: the key cannot tell its public half; ring's keys always can.
        Ok(()) | Err(RustlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(KeyPairError::KeyMismatch)
        }
        Err(e) => return Err(KeyPairError::BadCertificate(e.to_string())),
    }
    Ok(ParsedKeyPair {
        key: Arc::new(key),
        dns_names,
        not_after,
    })
}

/// The subjectAltName DNS names (normalised) and notAfter of a certificate.
fn names_and_expiry(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), KeyPairError> {
    let bad = |e: &dyn std::fmt::Display| KeyPairError::BadCertificate(e.to_string());
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(&e))?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| bad(&e))? {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                let dns = normalize_name(dns);
                if !dns.is_empty() && !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    Ok((names, not_after))
}

/// A DNS name as we index and look it up: lower-case, no trailing dot.
pub(crate) fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// For `a.example.com`, `example.com`: the suffix a `*.` wildcard must match. `None` when the
/// name has a single label or an empty first label (a wildcard covers exactly one label).
pub(crate) fn wildcard_suffix(name: &str) -> Option<&str> {
    let (first, rest) = name.split_once('.')?;
    match first.is_empty() || first == "*" || rest.is_empty() {
        true => None,
        false => Some(rest),
    }
}
