//! ACME with a real Pebble: an app with no static certificate gets one over TLS-ALPN-01
//! answered by the edge itself, keeps it across a restart, renews it without a failed
//! handshake, and an unreachable CA fails clearly without touching other apps.

#![allow(clippy::unwrap_used)] // tests may unwrap

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::Client;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::pebble::{Pebble, PebbleOptions};
use anyedge_test_support::pki::Pki;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn acme_section(directory: &str, ca_roots: &Path, state: &Path, extra: &str) -> String {
    format!(
        "[acme]\ndirectory = \"{directory}\"\ncontact = \"mailto:ops@example.com\"\nca_roots = \"{}\"\nstate_dir = \"{}\"\n{extra}\n",
        ca_roots.display(),
        state.display()
    )
}

fn tls_app(name: &str, host: &str, tls_port: u16, instance: SocketAddr, cert: bool) -> String {
    let certs = match cert {
        true => format!(
            "  [[apps.certificates]]\n  cert = \"{name}.pem\"\n  key = \"{name}-key.pem\"\n"
        ),
        false => String::new(),
    };
    format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"{host}\"]\n  [[apps.services]]\n  ports = [ {{ port = {tls_port}, bind = \"127.0.0.1\", handlers = [\"tls\", \"http\"] }} ]\n{certs}  [[apps.instances]]\n  id = \"{name}-1\"\n  address = \"{instance}\"\n"
    )
}

async fn start(toml: &str, base: &Path) -> Node {
    let config = anyedge_config::parse_with_base(toml, "acme.toml", Some(base))
        .unwrap_or_else(|d| panic!("{d}"));
    Node::start(config, Some(local(0)))
        .await
        .expect("node starts")
}

/// The serial of the certificate `app.test` is served with, once a client trusting only
/// Pebble's root completes a handshake.
async fn served_serial(pebble: &Pebble, port: u16) -> Option<Vec<u8>> {
    let tls = pebble
        .connect(local(port), "app.test", &[b"http/1.1"])
        .await
        .ok()?;
    let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
    Some(serial_of(der.as_ref()))
}

fn serial_of(der: &[u8]) -> Vec<u8> {
    let info = anyedge_tls::acme::CertInfo::of(der).expect("parse");
    info.serial.into_bytes()
}

fn metric(node: &Node, series: &str) -> u64 {
    let text = node.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_a_certificate_gets_one_from_pebble() {
    let instance = HttpInstance::start("app", false).await;
    let tls_port = free_port();
    let pebble = Pebble::start(PebbleOptions {
        tls_port,
        validity_secs: None,
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}",
        acme_section(&pebble.directory, &pebble.ca_roots, state.path(), ""),
        tls_app("app", "app.test", tls_port, instance.addr, false)
    );
    let node = start(&toml, state.path()).await;

    let serial = anyedge_test_support::eventually(
        "a certificate from Pebble for app.test",
        Duration::from_secs(60),
        || served_serial(&pebble, tls_port),
    )
    .await;
    let tls = pebble
        .connect(local(tls_port), "app.test", &[b"h2"])
        .await
        .expect("handshake trusting only Pebble's root");
    let mut client = Client::over(tls, true).await;
    let (status, _, body) = client.get("app.test", "/").await;
    assert_eq!((status, body.trim()), (200, "app"));

    assert_eq!(metric(&node, "anyedge_acme_orders_total{result=\"ok\"}"), 1);
    assert_eq!(
        metric(&node, "anyedge_acme_orders_total{result=\"error\"}"),
        0
    );
    let expiry = metric(
        &node,
        "anyedge_cert_expiry_timestamp_seconds{hostname=\"app.test\"}",
    );
    assert!(expiry > 1_700_000_000, "{}", node.metrics().render());

    let dir = state.path().join("certs/app.test");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("key.pem")), 0o600);
    assert_eq!(mode(&state.path().join("account.json")), 0o600);
    let status = std::fs::read_to_string(dir.join("status.json")).unwrap();
    assert!(status.contains("\"state\": \"valid\""), "{status}");

    // `anyedge certs list` reads the state directory.
    let path = state.path().join("acme.toml");
    std::fs::write(&path, &toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anyedge"))
        .args(["certs", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listing}");
    let line = listing.lines().find(|l| l.starts_with("app.test")).unwrap();
    assert!(line.contains("valid until 20"), "{listing}");
    assert!(line.contains("Pebble"), "{listing}");

    // A restart serves the stored certificate at once, with no new order.
    assert_eq!(node.shutdown(Duration::from_secs(1)).await, 0);
    drop(node);
    let node = start(&toml, state.path()).await;
    assert_eq!(served_serial(&pebble, tls_port).await, Some(serial));
    assert_eq!(metric(&node, "anyedge_acme_orders_total{result=\"ok\"}"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_replaces_the_old_one_without_a_failed_handshake() {
    let instance = HttpInstance::start("app", false).await;
    let tls_port = free_port();
    // 30 s certificates: renewed when 10 s are left (retry_min, also the shortest time between
    // two orders for a name, is brought below that).
    let pebble = Pebble::start(PebbleOptions {
        tls_port,
        validity_secs: Some(30),
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}",
        acme_section(
            &pebble.directory,
            &pebble.ca_roots,
            state.path(),
            "retry_min = \"1s\""
        ),
        tls_app("app", "app.test", tls_port, instance.addr, false)
    );
    let node = start(&toml, state.path()).await;
    let first =
        anyedge_test_support::eventually("the first certificate", Duration::from_secs(60), || {
            served_serial(&pebble, tls_port)
        })
        .await;

    // Handshake continuously until the certificate changes; none may fail.
    let pebble = Arc::new(pebble);
    let (stop, failures, handshakes) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let looping = {
        let (pebble, stop, failures, handshakes) = (
            pebble.clone(),
            stop.clone(),
            failures.clone(),
            handshakes.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match served_serial(&pebble, tls_port).await {
                    Some(_) => handshakes.fetch_add(1, Ordering::Relaxed),
                    None => failures.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let second = anyedge_test_support::eventually(
        "a renewed certificate",
        Duration::from_secs(60),
        || async {
            let serial = served_serial(&pebble, tls_port).await?;
            (serial != first).then_some(serial)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    looping.await.unwrap();
    assert_ne!(first, second);
    assert!(handshakes.load(Ordering::Relaxed) > 100);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "handshakes failed during renewal"
    );
    assert!(metric(&node, "anyedge_acme_orders_total{result=\"ok\"}") >= 2);
    assert_eq!(
        metric(&node, "anyedge_acme_orders_total{result=\"error\"}"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_fails_clearly_and_other_apps_are_served() {
    let pki = Pki::new();
    let (_, _, other_der) = pki.issue("other", &["other.test"]);
    let (app, other) = (
        HttpInstance::start("app", false).await,
        HttpInstance::start("other", false).await,
    );
    let tls_port = free_port();
    // Nothing listens on this port.
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let ca = pki.path().join("other.pem");
    let toml = format!(
        "{}{}{}",
        acme_section(
            &directory,
            &ca,
            &pki.path().join("state"),
            "retry_min = \"100ms\"\nretry_max = \"400ms\""
        ),
        tls_app("app", "app.test", tls_port, app.addr, false),
        tls_app("other", "other.test", tls_port, other.addr, true),
    );
    let node = start(&toml, pki.path()).await;

    anyedge_test_support::eventually(
        "three failed orders, retried with backoff",
        Duration::from_secs(20),
        || async {
            (metric(&node, "anyedge_acme_orders_total{result=\"error\"}") >= 3).then_some(())
        },
    )
    .await;
    let status =
        std::fs::read_to_string(pki.path().join("state/certs/app.test/status.json")).unwrap();
    assert!(status.contains("\"state\": \"failing\""), "{status}");
    assert!(status.contains("Connection refused"), "{status}");

    // The ACME hostname is refused clearly; the other app is served as before.
    let err = pki
        .connect(local(tls_port), "app.test", &[b"h2"])
        .await
        .expect_err("no certificate yet");
    assert!(err.to_string().contains("UnrecognisedName"), "{err}");
    let tls = pki
        .connect(local(tls_port), "other.test", &[b"h2"])
        .await
        .expect("other.test handshake");
    assert_eq!(
        tls.get_ref().1.peer_certificates().and_then(|c| c.first()),
        Some(&other_der)
    );
    let mut client = Client::over(tls, true).await;
    let (status, _, body) = client.get("other.test", "/").await;
    assert_eq!((status, body.trim()), (200, "other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostnames_added_on_reload_are_issued_and_removed_ones_stop_being_served() {
    let (one, two) = (
        HttpInstance::start("one", false).await,
        HttpInstance::start("two", false).await,
    );
    let tls_port = free_port();
    let pebble = Pebble::start(PebbleOptions {
        tls_port,
        validity_secs: None,
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let acme = acme_section(&pebble.directory, &pebble.ca_roots, state.path(), "");
    let first = format!(
        "{acme}{}",
        tls_app("one", "app.test", tls_port, one.addr, false)
    );
    let node = start(&first, state.path()).await;
    anyedge_test_support::eventually("app.test issued", Duration::from_secs(60), || {
        served_serial(&pebble, tls_port)
    })
    .await;

    // A new app with a new hostname: issued without a restart.
    let second = format!(
        "{first}{}",
        tls_app("two", "two.test", tls_port, two.addr, false)
    );
    let config = anyedge_config::parse_with_base(&second, "acme.toml", Some(state.path())).unwrap();
    assert!(node.reload(config).is_empty());
    let tls =
        anyedge_test_support::eventually("two.test issued", Duration::from_secs(60), || async {
            pebble
                .connect(local(tls_port), "two.test", &[b"h2"])
                .await
                .ok()
        })
        .await;
    let mut client = Client::over(tls, true).await;
    let (status, _, body) = client.get("two.test", "/").await;
    assert_eq!((status, body.trim()), (200, "two"));

    // app.test removed: no longer served (nor renewed).
    let third = format!(
        "{acme}{}",
        tls_app("two", "two.test", tls_port, two.addr, false)
    );
    let config = anyedge_config::parse_with_base(&third, "acme.toml", Some(state.path())).unwrap();
    assert!(node.reload(config).is_empty());
    let err =
        anyedge_test_support::eventually("app.test refused", Duration::from_secs(10), || async {
            pebble
                .connect(local(tls_port), "app.test", &[b"h2"])
                .await
                .err()
        })
        .await;
    assert!(err.to_string().contains("UnrecognisedName"), "{err}");
    assert!(pebble
        .connect(local(tls_port), "two.test", &[b"h2"])
        .await
        .is_ok());
    let metrics = anyedge_test_support::eventually(
        "app.test gone from the expiry metric",
        Duration::from_secs(10),
        || async {
            let text = node.metrics().render();
            (!text.contains("hostname=\"app.test\"")).then_some(text)
        },
    )
    .await;
    assert!(metrics.contains("anyedge_cert_expiry_timestamp_seconds{hostname=\"two.test\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_reports_the_cas_reason_and_backs_off() {
    let instance = HttpInstance::start("app", false).await;
    let tls_port = free_port();
    // Pebble validates on a port where nothing listens.
    let pebble = Pebble::start(PebbleOptions {
        tls_port: free_port(),
        validity_secs: None,
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}",
        acme_section(
            &pebble.directory,
            &pebble.ca_roots,
            state.path(),
            "retry_min = \"200ms\"\nretry_max = \"1s\""
        ),
        tls_app("app", "app.test", tls_port, instance.addr, false)
    );
    let node = start(&toml, state.path()).await;
    anyedge_test_support::eventually("two rejected orders", Duration::from_secs(60), || async {
        (metric(&node, "anyedge_acme_orders_total{result=\"error\"}") >= 2).then_some(())
    })
    .await;
    let status = std::fs::read_to_string(state.path().join("certs/app.test/status.json")).unwrap();
    assert!(status.contains("\"state\": \"failing\""), "{status}");
    assert!(
        status.contains("urn:ietf:params:acme:error:"),
        "the CA's problem type is reported: {status}\n{}",
        pebble.log()
    );
    assert_eq!(metric(&node, "anyedge_acme_orders_total{result=\"ok\"}"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_a_failing_order_and_certs_list_shows_it() {
    use anyedge_test_support::process::Proc;
    let pki = Pki::new();
    let instance = HttpInstance::start("app", false).await;
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let ca = pki.issue("ca-stand-in", &["ca.test"]).0;
    let toml = format!(
        "{}{}",
        acme_section(
            &directory,
            &ca,
            &pki.path().join("state"),
            "retry_min = \"200ms\"\nretry_max = \"1s\""
        ),
        tls_app("app", "app.test", free_port(), instance.addr, false)
    );
    let path = pki.path().join("anyedge.toml");
    std::fs::write(&path, &toml).unwrap();
    let log = pki.path().join("node.log");
    let bin = Path::new(env!("CARGO_BIN_EXE_anyedge"));
    let mut node = Proc::anyedge_run(bin, &path, local(free_port()), &log, None);
    let line = anyedge_test_support::eventually(
        "a failed order in the log",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            let line = text
                .lines()
                .filter(|l| l.contains("certificate order failed"))
                .nth(1)?;
            Some(line.to_string())
        },
    )
    .await;
    assert!(line.contains("app.test"), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    assert!(line.contains("retry_in"), "{line}");
    assert_eq!(node.try_exit_code(), None, "the node keeps running");

    let out = std::process::Command::new(bin)
        .args(["certs", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let row = listing.lines().find(|l| l.starts_with("app.test")).unwrap();
    assert!(row.contains("failing: creating the account"), "{listing}");
    assert!(row.contains("Connection refused"), "{listing}");
    node.signal(libc::SIGTERM);
}
