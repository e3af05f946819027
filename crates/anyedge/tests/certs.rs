//! `anyedge certs cluster-ca`, `anyedge certs node` and `anyedge certs secret-key`: the files,
//! their modes, no overwriting, and a node certificate that verifies against the CA as server
//! and as client.

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

fn anyedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anyedge"))
        .args(args)
        .output()
        .expect("run anyedge")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_node_certificate_from_the_cli_verifies_against_the_cluster_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let node_dir = dir.path().join("nodes");
    let (ca, nodes) = (
        ca_dir.to_str().expect("utf-8"),
        node_dir.to_str().expect("utf-8"),
    );
    let out = anyedge(&["certs", "cluster-ca", "--out", ca]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = anyedge(&["certs", "node", "--ca", ca, "--id", "ord-1", "--out", nodes]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&ca_dir.join("cluster-ca-key.pem")), 0o600);
    assert_eq!(mode(&node_dir.join("ord-1-key.pem")), 0o600);
    assert_eq!(mode(&node_dir.join("ord-1.pem")), 0o644);

    // Nothing is overwritten; a bad id and a missing CA are clear errors.
    let again = anyedge(&["certs", "cluster-ca", "--out", ca]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not overwriting"));
    let bad = anyedge(&[
        "certs", "node", "--ca", ca, "--id", "bad id", "--out", nodes,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let missing = anyedge(&["certs", "node", "--ca", nodes, "--id", "x", "--out", nodes]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cluster-ca.pem"));

    let ca_cert = CertificateDer::from_pem_file(ca_dir.join("cluster-ca.pem")).expect("ca pem");
    let leaf = CertificateDer::from_pem_file(node_dir.join("ord-1.pem")).expect("node pem");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert).expect("root");
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let now = UnixTime::now();
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("verifier");
    let name = ServerName::try_from("ord-1").expect("name");
    server
        .verify_server_cert(&leaf, &[], &name, &[], now)
        .expect("valid as server");
    let client = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .expect("verifier");
    client
        .verify_client_cert(&leaf, &[], now)
        .expect("valid as client");
}

#[test]
fn a_secret_key_from_the_cli_is_private_loads_and_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cluster.secret");
    let out = anyedge(&[
        "certs",
        "secret-key",
        "--out",
        path.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.trim().len(), 64, "{text}");
    assert!(text.trim().chars().all(|c| c.is_ascii_hexdigit()), "{text}");
    anyedge_tls::acme::SecretKey::load(&path).expect("a usable key");

    let again = anyedge(&[
        "certs",
        "secret-key",
        "--out",
        path.to_str().expect("utf-8"),
    ]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
}
