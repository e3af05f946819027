//! Which certificate a server name gets: per app, wildcards, unknown names, no name at all,
//! and names added at run time.

use super::support::*;
use anyedge_tls::{load_key_pair, DynamicCerts, SniResolver, TlsError, TlsServer, TlsShared};
use std::sync::Arc;

#[tokio::test]
async fn each_app_gets_its_own_certificate() {
    let pki = Pki::new();
    let alpha = pki.issue("alpha", &["alpha.test", "www.alpha.test"]);
    let beta = pki.issue("beta", &["beta.test"]);
    let toml = app("alpha", &["alpha.test"], &["alpha"]) + &app("beta", &["beta.test"], &["beta"]);
    let server = server(&config(pki.dir.path(), &toml));
    let client = pki.client(&[&TLS13], &[]);
    for (name, leaf) in [
        ("alpha.test", &alpha),
        ("www.alpha.test", &alpha),
        ("beta.test", &beta),
    ] {
        let (accepted, connected) = handshake(&server, &limits(), client.clone(), name).await;
        assert_eq!(accepted.unwrap().sni.as_deref(), Some(name));
        assert_eq!(peer_cert(&connected.unwrap()), leaf.der, "{name}");
    }
}

#[tokio::test]
async fn names_are_matched_without_case() {
    let pki = Pki::new();
    let alpha = pki.issue("alpha", &["alpha.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("alpha", &["alpha.test"], &["alpha"]),
    ));
    let client = pki.client(&[&TLS13], &[]);
    let (accepted, connected) = handshake(&server, &limits(), client, "ALPHA.Test").await;
    assert_eq!(accepted.unwrap().sni.as_deref(), Some("alpha.test"));
    assert_eq!(peer_cert(&connected.unwrap()), alpha.der);
}

#[tokio::test]
async fn a_wildcard_covers_exactly_one_label() {
    let pki = Pki::new();
    let wild = pki.issue("wild", &["*.wild.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("wild", &["*.wild.test"], &["wild"]),
    ));
    let client = pki.client(&[&TLS13], &[]);
    let (accepted, connected) = handshake(&server, &limits(), client.clone(), "a.wild.test").await;
    accepted.unwrap();
    assert_eq!(peer_cert(&connected.unwrap()), wild.der);
    for name in ["a.b.wild.test", "wild.test"] {
        let (accepted, connected) = handshake(&server, &limits(), client.clone(), name).await;
        match accepted {
            Err(TlsError::NoCertificate { sni }) => assert_eq!(sni.as_deref(), Some(name)),
            other => panic!("{name}: expected NoCertificate, got {other:?}"),
        }
        assert!(connected.is_err(), "{name}");
    }
}

#[tokio::test]
async fn an_unknown_name_is_refused_before_the_handshake() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let server = server(&config(
        pki.dir.path(),
        &app("alpha", &["alpha.test"], &["alpha"]),
    ));
    assert!(server.resolver().lookup(Some("nobody.test")).is_none());
    let client = pki.client(&[&TLS13, &TLS12], &[]);
    let (accepted, connected) = handshake(&server, &limits(), client, "nobody.test").await;
    let error = accepted.unwrap_err();
    assert_eq!(error.code(), "tls_no_certificate");
    assert!(error.is_client_fault());
    assert_eq!(
        error.to_string(),
        "no certificate for server name nobody.test"
    );
    assert_eq!(client_error(connected), "AlertReceived(UnrecognisedName)");
}

#[tokio::test]
async fn no_server_name_gets_the_default_certificate_or_nothing() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let default = pki.issue("default", &["127.0.0.1"]);
    let config = config(pki.dir.path(), &app("alpha", &["alpha.test"], &["alpha"]));
    let client = pki.client(&[&TLS13], &[]);

    // No default: a client that sends no name (an IP literal) is refused.
    let without = server(&config);
    let (accepted, connected) = handshake(&without, &limits(), client.clone(), "127.0.0.1").await;
    assert!(matches!(
        accepted,
        Err(TlsError::NoCertificate { sni: None })
    ));
    assert_eq!(client_error(connected), "AlertReceived(HandshakeFailure)");

    // With a default (a certificate that names an address alone).
    let default_key = load_key_pair(&pki.path("default.pem"), &pki.path("default-key.pem"))
        .unwrap()
        .key;
    let resolver = Arc::new(resolver(&config, Arc::default()).with_default(Some(default_key)));
    let with = TlsServer::new(resolver, &TlsShared::new().unwrap());
    let (accepted, connected) = handshake(&with, &limits(), client, "127.0.0.1").await;
    assert_eq!(accepted.unwrap().sni, None);
    assert_eq!(peer_cert(&connected.unwrap()), default.der);
}

#[tokio::test]
async fn an_apps_own_hostname_beats_a_name_another_certificate_lists() {
    let pki = Pki::new();
    let alpha = pki.issue_until("alpha", &["alpha.test"], (2030, 1, 1));
    // Another app's certificate also lists alpha.test, and expires later.
    pki.issue_until("other", &["other.test", "alpha.test"], (2035, 1, 1));
    let toml =
        app("other", &["other.test"], &["other"]) + &app("alpha", &["alpha.test"], &["alpha"]);
    let server = server(&config(pki.dir.path(), &toml));
    let key = server.resolver().lookup(Some("alpha.test")).unwrap();
    assert_eq!(key.end_entity_cert().unwrap(), &alpha.der);
}

#[tokio::test]
async fn dynamic_names_are_served_without_rebuilding() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let late = pki.issue("late", &["late.test", "*.later.test"]);
    let dynamic = Arc::new(DynamicCerts::new());
    let config = config(pki.dir.path(), &app("alpha", &["alpha.test"], &["alpha"]));
    let server = TlsServer::new(
        Arc::new(resolver(&config, dynamic.clone())),
        &TlsShared::new().unwrap(),
    );
    let client = pki.client(&[&TLS13], &[]);

    let (accepted, _) = handshake(&server, &limits(), client.clone(), "late.test").await;
    assert!(matches!(accepted, Err(TlsError::NoCertificate { .. })));

    let key = load_key_pair(&pki.path("late.pem"), &pki.path("late-key.pem"))
        .unwrap()
        .key;
    dynamic.insert("late.test", key.clone());
    dynamic.insert("*.Later.test", key);
    for name in ["late.test", "x.later.test"] {
        let (accepted, connected) = handshake(&server, &limits(), client.clone(), name).await;
        accepted.unwrap();
        assert_eq!(peer_cert(&connected.unwrap()), late.der, "{name}");
    }

    assert!(dynamic.remove("late.test"));
    assert!(!dynamic.remove("late.test"));
    let (accepted, _) = handshake(&server, &limits(), client, "late.test").await;
    assert!(matches!(accepted, Err(TlsError::NoCertificate { .. })));
    assert_eq!(dynamic.len(), 1);
}

#[test]
fn lookup_order_is_static_exact_static_wildcard_dynamic_default() {
    let pki = Pki::new();
    pki.issue("exact", &["a.order.test"]);
    pki.issue("wild", &["*.order.test"]);
    let toml =
        app("exact", &["a.order.test"], &["exact"]) + &app("wild", &["*.order.test"], &["wild"]);
    let config = config(pki.dir.path(), &toml);
    let load = |stem: &str| {
        let cert = pki.path(&format!("{stem}.pem"));
        load_key_pair(&cert, &pki.path(&format!("{stem}-key.pem")))
            .unwrap()
            .key
    };
    let dynamic = Arc::new(DynamicCerts::new());
    for name in ["a.order.test", "b.order.test", "dyn.test"] {
        dynamic.insert(name, load("wild"));
    }
    let resolver: SniResolver = resolver(&config, dynamic).with_default(Some(load("exact")));
    // Compared by certificate bytes: each load makes a new key.
    let cert_of = |name: Option<&str>| resolver.lookup(name).unwrap().cert[0].clone();
    let exact = load("exact").cert[0].clone();
    let wild = load("wild").cert[0].clone();
    assert_eq!(cert_of(Some("a.order.test")), exact);
    assert_eq!(cert_of(Some("A.Order.TEST.")), exact);
    assert_eq!(cert_of(Some("b.order.test")), wild);
    assert_eq!(cert_of(Some("dyn.test")), wild);
    assert_eq!(cert_of(Some("nothing.test")), exact);
    assert_eq!(cert_of(None), exact);
}
