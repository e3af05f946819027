//! The handshake itself: protocol versions, ALPN, the ACME config, and its bounds in time and
//! number.

use super::support::*;
use anyedge_tls::acme::{challenge_cert, Challenges};
use anyedge_tls::rustls::pki_types::ServerName;
use anyedge_tls::rustls::{ClientConnection, ProtocolVersion};
use anyedge_tls::{HandshakeLimits, TlsError, TlsServer, TlsShared};
use anyedge_tls::{ALPN_ACME_TLS, ALPN_H2, ALPN_HTTP11};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn tls12_only_and_tls13_only_clients_both_complete() {
    let pki = Pki::new();
    let alpha = pki.issue("alpha", &["alpha.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("alpha", &["alpha.test"], &["alpha"]),
    ));
    for (version, expected) in [
        (&TLS12, ProtocolVersion::TLSv1_2),
        (&TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let client = pki.client(&[version], &[]);
        let (accepted, connected) = handshake(&server, &limits(), client, "alpha.test").await;
        let (mut accepted, mut connected) = (accepted.unwrap(), connected.unwrap());
        assert_eq!(
            accepted.stream.get_ref().1.protocol_version(),
            Some(expected)
        );
        assert_eq!(connected.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(peer_cert(&connected), alpha.der);
        // Data flows both ways.
        connected.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        accepted.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
}

/// Protocols a client offers, and the one expected.
type Case = (&'static [&'static [u8]], Option<&'static [u8]>);

#[tokio::test]
async fn alpn_is_negotiated_as_offered() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("alpha", &["alpha.test"], &["alpha"]),
    ));
    let cases: [Case; 4] = [
        (&[ALPN_H2, ALPN_HTTP11], Some(ALPN_H2)),
        (&[ALPN_HTTP11, ALPN_H2], Some(ALPN_H2)),
        (&[ALPN_HTTP11], Some(ALPN_HTTP11)),
        (&[], None),
    ];
    for version in [&TLS12, &TLS13] {
        for (offered, expected) in cases {
            let client = pki.client(&[version], offered);
            let (accepted, connected) = handshake(&server, &limits(), client, "alpha.test").await;
            assert_eq!(accepted.unwrap().alpn.as_deref(), expected, "{offered:?}");
            assert_eq!(connected.unwrap().get_ref().1.alpn_protocol(), expected);
        }
    }
    // Nothing in common: the handshake fails (RFC 7301's no_application_protocol).
    let client = pki.client(&[&TLS13], &[b"h3"]);
    let (accepted, connected) = handshake(&server, &limits(), client, "alpha.test").await;
    assert_eq!(accepted.unwrap_err().code(), "tls_handshake_failed");
    assert_eq!(
        client_error(connected),
        "AlertReceived(NoApplicationProtocol)"
    );
}

#[tokio::test]
async fn acme_tls_alpn_clients_get_the_challenge_config() {
    let pki = Pki::new();
    let alpha = pki.issue("alpha", &["alpha.test"]);
    let challenges = Arc::new(Challenges::new());
    let challenge = challenge_cert("alpha.test", &[9u8; 32]).unwrap();
    challenges.insert("alpha.test", challenge.clone());
    let shared = TlsShared::new().unwrap();
    let config = config(
        pki.dir.path(),
        &app("alpha", &["alpha.test", "beta.test"], &["alpha"]),
    );
    let server = TlsServer::new(Arc::new(resolver(&config, Arc::default())), &shared)
        .with_acme(challenges.clone(), &shared);

    let client = validator_client(&[ALPN_ACME_TLS]);
    let (accepted, connected) = handshake(&server, &limits(), client, "alpha.test").await;
    assert_eq!(accepted.unwrap().alpn.as_deref(), Some(ALPN_ACME_TLS));
    assert_eq!(peer_cert(&connected.unwrap()), challenge.cert[0].clone());

    // Other protocols on the same name get the usual certificate.
    let client = pki.client(&[&TLS13], &[ALPN_H2]);
    let (accepted, connected) = handshake(&server, &limits(), client, "alpha.test").await;
    assert_eq!(accepted.unwrap().alpn.as_deref(), Some(ALPN_H2));
    assert_eq!(peer_cert(&connected.unwrap()), alpha.der);

    // No challenge pending (any more): `acme-tls/1` is not spoken.
    challenges.remove("alpha.test");
    let client = validator_client(&[ALPN_ACME_TLS]);
    let (accepted, connected) = handshake(&server, &limits(), client, "alpha.test").await;
    assert_eq!(accepted.unwrap_err().code(), "tls_handshake_failed");
    assert_eq!(
        client_error(connected),
        "AlertReceived(NoApplicationProtocol)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_times_out() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("alpha", &["alpha.test"], &["alpha"]),
    ));
    let limits = HandshakeLimits::new(Duration::from_secs(10), 4);
    let (_client_io, server_io) = tokio::io::duplex(1 << 16);
    let started = tokio::time::Instant::now();
    let error = server.accept(server_io, &limits).await.unwrap_err();
    assert!(
        matches!(error, TlsError::Timeout { sni: None }),
        "{error:?}"
    );
    assert_eq!(error.code(), "tls_handshake_timeout");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(limits.permits.available_permits(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stalls_after_its_hello_times_out_on_the_same_deadline() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("alpha", &["alpha.test"], &["alpha"]),
    ));
    let limits = HandshakeLimits::new(Duration::from_secs(10), 4);
    let (mut client_io, server_io) = tokio::io::duplex(1 << 16);
    // A ClientHello, and then nothing: the client never reads the answer nor finishes.
    let name = ServerName::try_from("alpha.test").unwrap();
    let mut client = ClientConnection::new(pki.client(&[&TLS13], &[]), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    client_io.write_all(&hello).await.unwrap();
    let started = tokio::time::Instant::now();
    let error = server.accept(server_io, &limits).await.unwrap_err();
    match error {
        TlsError::Timeout { sni } => assert_eq!(sni.as_deref(), Some("alpha.test")),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test]
async fn handshakes_beyond_the_cap_fail_at_once() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("alpha", &["alpha.test"], &["alpha"]),
    ));
    let limits = HandshakeLimits::new(Duration::from_secs(10), 1);
    let held = limits.permits.try_acquire().unwrap();
    let (_client_io, server_io) = tokio::io::duplex(1 << 16);
    let error = server.accept(server_io, &limits).await.unwrap_err();
    assert!(matches!(error, TlsError::TooManyHandshakes));
    assert_eq!(error.code(), "tls_too_many_handshakes");
    assert!(!error.is_client_fault());
    drop(held);
    let client = pki.client(&[&TLS13], &[]);
    let (accepted, _) = handshake(&server, &limits, client, "alpha.test").await;
    accepted.unwrap();
    assert_eq!(
        limits.permits.available_permits(),
        1,
        "the permit is returned"
    );
}

#[tokio::test]
async fn bytes_that_are_not_tls_fail_the_handshake() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("alpha", &["alpha.test"], &["alpha"]),
    ));
    let (mut client_io, server_io) = tokio::io::duplex(1 << 16);
    client_io
        .write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    let error = server.accept(server_io, &limits()).await.unwrap_err();
    assert!(
        matches!(error, TlsError::Handshake { sni: None, .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), "tls_handshake_failed");
    // The client got a fatal alert record, not silence.
    let mut answer = Vec::new();
    client_io.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
}
