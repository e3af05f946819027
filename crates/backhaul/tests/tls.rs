//! Mutual TLS between nodes over loopback with tokio-rustls and certificates from the real
//! cluster CA code (`anyedge_tls::cluster_ca`).

use anyedge_backhaul::tls::{peer_node_id, ClusterTls, TlsError};
use anyedge_backhaul::{ALPN_H2, ALPN_TCP};
use anyedge_tls::cluster_ca::{issue_node, new_ca, PemPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DEADLINE: Duration = Duration::from_secs(10);

fn node(ca: &PemPair, id: &str) -> ClusterTls {
    let pair = issue_node(ca, id).expect("node cert");
    ClusterTls::from_pem(
        ca.cert.as_bytes(),
        pair.cert.as_bytes(),
        pair.key.as_bytes(),
    )
    .expect("cluster tls")
}

struct Outcome {
    server: std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>,
    client: std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>,
}

/// One handshake on loopback: `server` accepts, a client with `client` dials `name`. Once both
/// ends are done, a byte goes each way, so a refusal the client only learns after its own
/// handshake (TLS 1.3 client auth) shows up as a client error too.
async fn handshake(server: &ClusterTls, client: Arc<rustls::ClientConfig>, name: &str) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(server.server_config());
    let accept = async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        tls.write_all(b"s").await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        Ok(tls)
    };
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let connect = async move {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        tls.write_all(b"c").await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        Ok(tls)
    };
    let (server, client) = tokio::time::timeout(DEADLINE, async { tokio::join!(accept, connect) })
        .await
        .expect("handshake within the deadline");
    Outcome { server, client }
}

#[tokio::test]
async fn nodes_of_one_ca_connect_with_the_asked_alpn() {
    let ca = new_ca().expect("ca");
    let worker = node(&ca, "worker-1");
    let edge = node(&ca, "edge-1");
    for alpn in [ALPN_H2, ALPN_TCP] {
        let out = handshake(&worker, edge.client_config(alpn), "worker-1").await;
        let server = out.server.expect("server side");
        let client = out.client.expect("client side");
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(alpn));
        assert_eq!(server.get_ref().1.alpn_protocol(), Some(alpn));
        assert_eq!(peer_node_id(server.get_ref().1).as_deref(), Some("edge-1"));
        assert_eq!(
            peer_node_id(client.get_ref().1).as_deref(),
            Some("worker-1")
        );
    }
    // By address too: node certificates name 127.0.0.1.
    let out = handshake(&worker, edge.client_config(ALPN_TCP), "127.0.0.1").await;
    assert!(out.client.is_ok() && out.server.is_ok());
    // The same config each time (built once, so sessions resume).
    assert!(Arc::ptr_eq(
        &edge.client_config(ALPN_H2),
        &edge.client_config(ALPN_H2)
    ));
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = new_ca().expect("ca");
    let worker = node(&ca, "worker-1");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert.as_bytes()).expect("ca der"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_TCP.to_vec()];
    let out = handshake(&worker, Arc::new(config), "worker-1").await;
    let err = out.server.expect_err("server refuses");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    let ca = new_ca().expect("ca");
    let other = new_ca().expect("other ca");
    let worker = node(&ca, "worker-1");
    // Its own side trusts our CA, so only the worker's check of its certificate can fail.
    let stranger = issue_node(&other, "edge-1").expect("cert");
    let edge = ClusterTls::from_pem(
        ca.cert.as_bytes(),
        stranger.cert.as_bytes(),
        stranger.key.as_bytes(),
    )
    .expect("tls");
    let out = handshake(&worker, edge.client_config(ALPN_TCP), "worker-1").await;
    let err = out.server.expect_err("server refuses");
    // Every cluster CA has the same subject, so the issuer is found and its signature fails.
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let ca = new_ca().expect("ca");
    let other = new_ca().expect("other ca");
    let edge = node(&ca, "edge-1");
    // The impostor trusts our CA for clients, so only the edge's check can fail.
    let impostor_pair = issue_node(&other, "worker-1").expect("cert");
    let impostor = ClusterTls::from_pem(
        ca.cert.as_bytes(),
        impostor_pair.cert.as_bytes(),
        impostor_pair.key.as_bytes(),
    )
    .expect("tls");
    let out = handshake(&impostor, edge.client_config(ALPN_H2), "worker-1").await;
    let err = out.client.expect_err("client refuses");
    // Every cluster CA has the same subject, so the issuer is found and its signature fails.
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    assert!(out.server.is_err());
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let ca = new_ca().expect("ca");
    let pair = issue_node(&ca, "n").expect("cert");
    let (c, k) = (pair.cert.as_bytes(), pair.key.as_bytes());

    let err = ClusterTls::from_pem(b"", c, k).expect_err("no CA");
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert_eq!(err.to_string(), "CA PEM: no certificate in it");
    let err = ClusterTls::from_pem(ca.cert.as_bytes(), c, c).expect_err("no key");
    assert_eq!(err.to_string(), "key PEM: no private key in it");
    // A key that is not the certificate's.
    let err = ClusterTls::from_pem(ca.cert.as_bytes(), c, ca.key.as_bytes()).expect_err("mismatch");
    assert!(matches!(err, TlsError::BadCertificate { .. }), "{err:?}");
    assert!(err.to_string().starts_with("certificate PEM: "), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_path, cert_path, key_path) = (
        dir.path().join("ca.pem"),
        dir.path().join("node.pem"),
        dir.path().join("node.key"),
    );
    std::fs::write(&ca_path, &ca.cert).expect("write");
    std::fs::write(&cert_path, c).expect("write");
    std::fs::write(&key_path, k).expect("write");
    ClusterTls::load(&ca_path, &cert_path, &key_path).expect("loads");
    let missing = dir.path().join("missing.pem");
    let err = ClusterTls::load(&ca_path, &missing, &key_path).expect_err("missing");
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read", missing.display())),
        "{err}"
    );
    std::fs::write(&key_path, c).expect("write");
    let err = ClusterTls::load(&ca_path, &cert_path, &key_path).expect_err("cert as key");
    assert_eq!(
        err.to_string(),
        format!("{}: no private key in it", key_path.display())
    );
}
