//! The cluster CA and node certificates (`anyedge certs cluster-ca`, `anyedge certs node`): the
//! identities of mutual TLS between nodes (backhaul).
//!
//! Choices: ECDSA P-256 keys; the CA is valid for 10 years, with a path length of 0 (it signs
//! node certificates only); a node certificate is valid for 1 year (from an hour ago, for
//! clock skew), for both ends of a connection (`serverAuth` and `clientAuth`), its subject CN
//! the node id and its names the node id as a DNS name (how peers will check it: nodes dial
//! each other by advertised address and verify the id) plus `127.0.0.1` and `::1` (so a
//! loopback fleet works by address too). Only a CA made here can sign: its subject is
//! rebuilt from its common name, which is all this CA has.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const CA_NAME: &str = "anyedge cluster CA";
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const NODE_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
const SKEW: Duration = Duration::from_secs(3_600);

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CA certificate cannot be read: {0}")]
    BadCaCert(String),
    #[error("the CA certificate is not a CA made by `anyedge certs cluster-ca`: {0}")]
    NotOurCa(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("node id `{0}` cannot be a DNS name in a certificate")]
    BadId(String),
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(params: &mut CertificateParams, length: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - SKEW;
    params.not_after = now + length;
}

/// A new cluster CA.
pub fn new_ca() -> Result<PemPair, CaError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(CA_NAME);
    validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for node `id`, signed by the CA (`ca.cert`, `ca.key`, PEM).
pub fn issue_node(ca: &PemPair, id: &str) -> Result<PemPair, CaError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = rebuild_ca(&ca.cert, &ca_key)?;
    let dns = rcgen::Ia5String::try_from(id.to_string()).map_err(|_| CaError::BadId(id.into()))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, DnValue::Utf8String(id.to_string()));
    params.subject_alt_names = vec![
        SanType::DnsName(dns),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The CA as rcgen needs it to sign: same subject and same key (so the same key identifier)
/// as the certificate on disk, which is what a verifier matches.
fn rebuild_ca(cert_pem: &str, key: &KeyPair) -> Result<rcgen::Certificate, CaError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| CaError::BadCaCert(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CaError::BadCaCert(e.to_string()))?;
    if !cert.is_ca() {
        return Err(CaError::NotOurCa("it is not a CA".into()));
    }
    if cert.public_key().raw != key.public_key_der().as_slice() {
        return Err(CaError::KeyMismatch);
    }
    let subject = cert.subject();
    let names: Vec<_> = subject.iter_attributes().collect();
    let cn = match (names.as_slice(), subject.iter_common_name().next()) {
        ([_], Some(cn)) => cn
            .as_str()
            .map_err(|e| CaError::NotOurCa(e.to_string()))?
            .to_string(),
        _ => return Err(CaError::NotOurCa(format!("its subject is `{subject}`"))),
    };
    Ok(ca_params(&cn).self_signed(key)?)
}

#[cfg(test)]
mod tests;
