//! TLS termination: certificates chosen by SNI, HTTP/1.1 and HTTP/2 by ALPN, 421 for a Host that
//! does not belong to the SNI's app, a clear failure for an unknown name, force_https.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::Client;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::pki::Pki;
use std::net::SocketAddr;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn app(
    name: &str,
    host: &str,
    tls_port: u16,
    plain_port: u16,
    instance: SocketAddr,
    force_https: bool,
) -> String {
    format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"{host}\"]\n  [[apps.services]]\n  force_https = {force_https}\n  ports = [ {{ port = {plain_port}, bind = \"127.0.0.1\", handlers = [\"http\"] }}, {{ port = {tls_port}, bind = \"127.0.0.1\", handlers = [\"tls\", \"http\"] }} ]\n  [[apps.certificates]]\n  cert = \"{name}.pem\"\n  key = \"{name}-key.pem\"\n  [[apps.instances]]\n  id = \"{name}-1\"\n  address = \"{instance}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let pki = Pki::new();
    let (_, _, alpha_der) = pki.issue("alpha", &["alpha.test"]);
    let (_, _, beta_der) = pki.issue("beta", &["beta.test"]);
    let (_, _, gamma_der) = pki.issue("gamma", &["gamma.test"]);
    let (a, b, g) = (
        HttpInstance::start("alpha", false).await,
        HttpInstance::start("beta", false).await,
        HttpInstance::start("gamma", false).await,
    );
    let (tls_port, plain_port) = (free_port(), free_port());
    let toml = format!(
        "{}{}{}",
        app("alpha", "alpha.test", tls_port, plain_port, a.addr, true),
        app("beta", "beta.test", tls_port, plain_port, b.addr, false),
        app("gamma", "gamma.test", tls_port, plain_port, g.addr, false)
    );
    let config = anyedge_config::parse_with_base(&toml, "https.toml", Some(pki.path()))
        .unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(local(0)))
        .await
        .expect("node starts");

    for (sni, der, want) in [
        ("alpha.test", &alpha_der, "alpha"),
        ("beta.test", &beta_der, "beta"),
        ("gamma.test", &gamma_der, "gamma"),
    ] {
        for (alpn, h2) in [(b"http/1.1".as_slice(), false), (b"h2".as_slice(), true)] {
            let tls = pki
                .connect(local(tls_port), sni, &[alpn])
                .await
                .expect("handshake");
            let (_, conn) = tls.get_ref();
            assert_eq!(
                conn.peer_certificates().and_then(|c| c.first()),
                Some(der),
                "{sni}"
            );
            assert_eq!(conn.alpn_protocol(), Some(alpn));
            let mut c = Client::over(tls, h2).await;
            let (status, _, body) = c.get(sni, "/").await;
            assert_eq!((status, body.trim()), (200, want), "{sni} h2={h2}");
            let (_, _, headers) = c.get(sni, "/headers").await;
            assert!(headers.contains("x-forwarded-proto: https"), "{headers}");
            assert!(headers.contains("x-forwarded-ssl: on"), "{headers}");
            // A Host of another app on this TLS connection: 421.
            let other = if sni == "alpha.test" {
                "beta.test"
            } else {
                "alpha.test"
            };
            let (status, headers, _) = c.get(other, "/").await;
            assert_eq!(status, 421);
            assert_eq!(headers["anyedge-error"], "misdirected_request");
        }
    }

    // No certificate for the name: the handshake fails with a clear alert.
    let err = pki
        .connect(local(tls_port), "nobody.test", &[b"h2"])
        .await
        .expect_err("no certificate");
    assert!(err.to_string().contains("UnrecognisedName"), "{err}");
    assert!(node
        .metrics()
        .render()
        .contains("anyedge_node_errors_total{code=\"tls_handshake_failed\"} 1"));
    assert!(node
        .metrics()
        .render()
        .contains("anyedge_cert_expiry_timestamp_seconds{hostname=\"alpha.test\"}"));

    // force_https: plain HTTP for alpha gets 301 to https; beta is served in the clear.
    let mut plain = Client::h1(local(plain_port)).await;
    let (status, headers, _) = plain.get("alpha.test", "/some/path?q=1").await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "https://alpha.test/some/path?q=1");
    assert_eq!(plain.get("beta.test", "/").await.0, 200);
}
