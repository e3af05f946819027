//! TLS-ALPN-01 (RFC 8737): the challenge certificates of pending orders, by hostname, for the
//! edge's `acme-tls/1` server config.

use super::storage::ChallengePem;
use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a challenge certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeCertError {
    #[error("cannot make the challenge certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot load the challenge key: {0}")]
    Key(#[from] rustls::Error),
}

/// The pending challenges: hostname to its challenge certificate. Reads are lock-free; a write
/// copies the map (one per order).
#[derive(Debug, Default)]
pub struct Challenges {
    by_name: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer validation connections for `hostname` with `key` until [`Challenges::remove`].
    pub fn insert(&self, hostname: &str, key: Arc<CertifiedKey>) {
        self.by_name.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(hostname.to_string(), key.clone());
            map
        });
    }

    pub fn remove(&self, hostname: &str) {
        self.by_name.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(hostname);
            map
        });
    }

    /// The challenge certificate for `name` (lower-case, no trailing dot).
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.by_name.load().get(name).cloned()
    }

    pub fn is_pending(&self, name: &str) -> bool {
        self.by_name.load().contains_key(name)
    }
}

impl ResolvesServerCert for Challenges {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = crate::certs::normalize_name(client_hello.server_name()?);
        self.get(&name)
    }
}

/// The RFC 8737 certificate for `hostname`: self-signed, the name as its only subjectAltName,
/// and the critical `acmeIdentifier` extension holding `digest` (the SHA-256 of the key
/// authorization).
pub fn challenge_cert(
    hostname: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, ChallengeCertError> {
    Ok(challenge_cert_parts(hostname, digest)?.0)
}

/// [`challenge_cert`], with the certificate and key in DER for publishing to other edges.
pub fn challenge_cert_parts(
    hostname: &str,
    digest: &[u8],
) -> Result<(Arc<CertifiedKey>, ChallengePem), ChallengeCertError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let parts = ChallengePem {
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    };
    Ok((challenge_key(&parts)?, parts))
}

/// The served form of a challenge certificate published by another edge.
pub fn challenge_key(parts: &ChallengePem) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(parts.key_der.clone()));
    let signing_key = crate::provider().key_provider.load_private_key(key_der)?;
    let chain = vec![CertificateDer::from(parts.cert_der.clone())];
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_challenge_certificate_names_the_host_and_carries_the_digest() {
        let digest = [7u8; 32];
        let key = challenge_cert("app.test", &digest).unwrap();
        let der = key.cert[0].as_ref();
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let acme_oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == acme_oid)
            .unwrap();
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes: tag 0x04, length 0x20, the digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
        let challenges = Challenges::new();
        challenges.insert("app.test", key);
        assert!(challenges.is_pending("app.test"));
        challenges.remove("app.test");
        assert!(!challenges.is_pending("app.test"));
    }
}
