//! A node certificate chains to the cluster CA for both ends of a connection, with rustls'
//! own WebPKI verifiers (ring); and a certificate from another CA does not.

use super::*;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::sync::Arc;

fn der(pem: &str) -> CertificateDer<'static> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    CertificateDer::from(p.contents)
}

fn roots(ca: &PemPair) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(der(&ca.cert)).expect("add root");
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[test]
fn a_node_certificate_chains_to_the_cluster_ca_as_server_and_client() {
    let ca = new_ca().expect("ca");
    let node = issue_node(&ca, "ord-1").expect("node");
    let leaf = der(&node.cert);
    let now = UnixTime::now();
    let server = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .expect("server verifier");
    for name in ["ord-1", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(name).expect("name");
        server
            .verify_server_cert(&leaf, &[], &name, &[], now)
            .unwrap_or_else(|e| panic!("as server for {name:?}: {e}"));
    }
    let other = ServerName::try_from("syd-1").expect("name");
    assert!(server
        .verify_server_cert(&leaf, &[], &other, &[], now)
        .is_err());
    let client = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .expect("client verifier");
    client
        .verify_client_cert(&leaf, &[], now)
        .expect("as client");

    // Another CA's node is refused.
    let stranger = issue_node(&new_ca().expect("ca"), "ord-1").expect("node");
    assert!(client
        .verify_client_cert(&der(&stranger.cert), &[], now)
        .is_err());
    let ord = ServerName::try_from("ord-1").expect("name");
    assert!(server
        .verify_server_cert(&der(&stranger.cert), &[], &ord, &[], now)
        .is_err());
}

#[test]
fn signing_needs_the_cas_own_key_and_an_anyedge_ca() {
    let ca = new_ca().expect("ca");
    let other = new_ca().expect("ca");
    let mixed = PemPair {
        cert: ca.cert.clone(),
        key: other.key.clone(),
    };
    assert!(matches!(issue_node(&mixed, "n"), Err(CaError::KeyMismatch)));
    let node = issue_node(&ca, "n").expect("node");
    let leaf_as_ca = PemPair {
        cert: node.cert,
        key: node.key,
    };
    assert!(matches!(
        issue_node(&leaf_as_ca, "n2"),
        Err(CaError::NotOurCa(_))
    ));
    assert!(matches!(issue_node(&ca, "ünï"), Err(CaError::BadId(_))));
}
