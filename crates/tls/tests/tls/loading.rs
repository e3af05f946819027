//! Loading certificates from config: key formats, broken pairs reported with their paths while
//! the good ones serve, and expiry per name.

use super::support::*;
use anyedge_tls::{CertStore, KeyPairError};

#[tokio::test]
async fn broken_pairs_are_reported_with_their_paths_and_the_others_serve() {
    let pki = Pki::new();
    let alpha = pki.issue("alpha", &["alpha.test"]);
    pki.issue("beta", &["beta.test"]);
    pki.issue("gamma", &["gamma.test"]);
    pki.issue("addr", &["127.0.0.1"]);
    let bad_pem = "-----BEGIN CERTIFICATE-----\n@@not base64@@\n-----END CERTIFICATE-----\n";
    std::fs::write(pki.path("garbage.pem"), bad_pem).unwrap();
    let pair = |cert: &str, key: &str| {
        format!("  [[apps.certificates]]\n  cert = {cert:?}\n  key = {key:?}\n")
    };
    let toml = app("alpha", &["alpha.test"], &["alpha"])
        + "[[apps]]\nname = \"broken\"\nhostnames = [\"beta.test\"]\n"
        + &pair("garbage.pem", "beta-key.pem")
        + &pair("beta.pem", "gamma-key.pem")
        + &pair("missing.pem", "beta-key.pem")
        + &pair("beta.pem", "alpha.pem")
        + &pair("addr.pem", "addr-key.pem");
    let config = config(pki.dir.path(), &toml);
    let (store, errors) = CertStore::load(&config);

    let problems: Vec<_> = errors
        .iter()
        .map(|e| (e.cert.clone(), &e.problem))
        .collect();
    assert_eq!(problems.len(), 5, "{errors:#?}");
    assert!(
        matches!(problems[0], (ref p, KeyPairError::CertPem(_))  if *p == pki.path("garbage.pem"))
    );
    assert!(
        matches!(problems[1], (ref p, KeyPairError::KeyMismatch) if *p == pki.path("beta.pem"))
    );
    assert!(
        matches!(problems[2], (ref p, KeyPairError::Read { .. }) if *p == pki.path("missing.pem"))
    );
    assert!(matches!(problems[3], (_, KeyPairError::NoKey)));
    assert!(matches!(problems[4], (_, KeyPairError::NoDnsNames)));
    for error in &errors {
        assert_eq!(error.app, "broken");
        let text = error.to_string();
        assert!(text.contains(&error.cert.display().to_string()), "{text}");
        assert!(text.contains(&error.key.display().to_string()), "{text}");
    }
    let mismatch = errors[1].to_string();
    assert!(
        mismatch.ends_with("the private key does not match the certificate"),
        "{mismatch}"
    );
    let missing = errors[2].to_string();
    assert!(
        missing.contains(&format!(
            "cannot read {}",
            pki.path("missing.pem").display()
        )),
        "{missing}"
    );

    // The good certificate serves; the names of the broken ones have none.
    assert_eq!(store.expiries().len(), 1);
    let server = anyedge_tls::TlsServer::new(
        std::sync::Arc::new(anyedge_tls::SniResolver::new(
            store.into(),
            Default::default(),
        )),
        &anyedge_tls::TlsShared::new().unwrap(),
    );
    let client = pki.client(&[&TLS13], &[]);
    let (accepted, connected) = handshake(&server, &limits(), client.clone(), "alpha.test").await;
    accepted.unwrap();
    assert_eq!(peer_cert(&connected.unwrap()), alpha.der);
    let (accepted, _) = handshake(&server, &limits(), client, "beta.test").await;
    assert_eq!(accepted.unwrap_err().code(), "tls_no_certificate");
}

/// PKCS#1 RSA and SEC1 EC keys (with an `EC PARAMETERS` block before the key, as openssl writes
/// it), from the committed fixtures; PKCS#8 is what every other test uses.
#[tokio::test]
async fn pkcs1_rsa_and_sec1_ec_keys_load_and_serve() {
    let pki = Pki::new();
    let fixtures = fixtures();
    let toml = app("rsa", &["rsa.test"], &["rsa"]) + &app("ec", &["ec.test"], &["ec"]);
    let config = config(&fixtures, &toml);
    let (store, errors) = CertStore::load(&config);
    assert!(errors.is_empty(), "{errors:#?}");
    let server = anyedge_tls::TlsServer::new(
        std::sync::Arc::new(anyedge_tls::SniResolver::new(
            store.into(),
            Default::default(),
        )),
        &anyedge_tls::TlsShared::new().unwrap(),
    );
    for version in [&TLS12, &TLS13] {
        for name in ["rsa", "ec"] {
            let pem = std::fs::read(fixtures.join(format!("{name}.pem"))).unwrap();
            let expected = anyedge_tls::parse_key_pair(
                &pem,
                &std::fs::read(fixtures.join(format!("{name}-key.pem"))).unwrap(),
            )
            .unwrap();
            let client = pki.client(&[version], &[]);
            let (accepted, connected) =
                handshake(&server, &limits(), client, &format!("{name}.test")).await;
            accepted.unwrap();
            assert_eq!(
                &peer_cert(&connected.unwrap()),
                expected.key.end_entity_cert().unwrap()
            );
        }
    }
}

#[test]
fn expiry_is_recorded_per_name() {
    let pki = Pki::new();
    pki.issue_until("alpha", &["alpha.test", "www.alpha.test"], (2031, 1, 2));
    pki.issue_until("wild", &["*.wild.test"], (2032, 3, 4));
    let toml =
        app("alpha", &["alpha.test"], &["alpha"]) + &app("wild", &["*.wild.test"], &["wild"]);
    let (store, errors) = CertStore::load(&config(pki.dir.path(), &toml));
    assert!(errors.is_empty(), "{errors:#?}");
    let expiries = store.expiries();
    assert_eq!(
        expiries,
        vec![
            ("*.wild.test".to_string(), 1_961_971_200),
            ("alpha.test".to_string(), 1_925_078_400),
            ("www.alpha.test".to_string(), 1_925_078_400),
        ]
    );
    assert_eq!(store.len(), 3);
}
