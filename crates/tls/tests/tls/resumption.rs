//! Sessions resume across a reload: two `TlsServer`s built from one `TlsShared` share the
//! session cache and ticket keys.

use super::support::*;
use anyedge_tls::rustls::{ClientConfig, HandshakeKind, SupportedProtocolVersion};
use anyedge_tls::{TlsServer, TlsShared};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A handshake and a little data (TLS 1.3 tickets travel after the handshake), then how the
/// handshake went from the client's side.
async fn connect(server: &TlsServer, client: Arc<ClientConfig>) -> HandshakeKind {
    let (accepted, connected) = handshake(server, &limits(), client, "alpha.test").await;
    let (mut accepted, mut connected) = (accepted.unwrap(), connected.unwrap());
    accepted.stream.write_all(b"hi").await.unwrap();
    accepted.stream.flush().await.unwrap();
    let mut buf = [0; 2];
    connected.read_exact(&mut buf).await.unwrap();
    connected.get_ref().1.handshake_kind().unwrap()
}

fn versions() -> [&'static SupportedProtocolVersion; 2] {
    [&TLS13, &TLS12]
}

#[tokio::test]
async fn sessions_resume_across_a_reload() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let config = config(pki.dir.path(), &app("alpha", &["alpha.test"], &["alpha"]));
    let shared = TlsShared::new().unwrap();
    for version in versions() {
        let client = pki.client(&[version], &[]);
        let before = TlsServer::new(Arc::new(resolver(&config, Arc::default())), &shared);
        assert_eq!(connect(&before, client.clone()).await, HandshakeKind::Full);
        // A reload: a new store and server over the same shared state.
        let after = TlsServer::new(Arc::new(resolver(&config, Arc::default())), &shared);
        assert_eq!(
            connect(&after, client).await,
            HandshakeKind::Resumed,
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn without_the_shared_state_sessions_do_not_resume() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let config = config(pki.dir.path(), &app("alpha", &["alpha.test"], &["alpha"]));
    for version in versions() {
        let client = pki.client(&[version], &[]);
        let before = TlsServer::new(
            Arc::new(resolver(&config, Arc::default())),
            &TlsShared::new().unwrap(),
        );
        assert_eq!(connect(&before, client.clone()).await, HandshakeKind::Full);
        let after = TlsServer::new(
            Arc::new(resolver(&config, Arc::default())),
            &TlsShared::new().unwrap(),
        );
        assert_eq!(
            connect(&after, client).await,
            HandshakeKind::Full,
            "{version:?}"
        );
    }
}
