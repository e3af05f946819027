//! ACME with a real Pebble: an app with no static certificate gets one over TLS-ALPN-01
//! answered by the edge itself, keeps it across a restart, renews it without a failed
//! handshake, an unreachable CA fails clearly without touching other apps, and a CA that is
//! away while a renewal is due costs nothing: the old certificate is served, the renewal is
//! retried with backoff and succeeds when the CA returns.

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
/// The certificate entry for `host` in the node's `/v1/status` (the dashboard's picture).
async fn status_cert(node: &Node, host: &str) -> serde_json::Value {
    let mut c = Client::h1(node.admin_addr()).await;
    let (status, _, body) = c.get("admin", "/v1/status").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    v["certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["hostname"] == host))
        .cloned()
        .unwrap_or_else(|| panic!("{host} in {v}"))
}

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
    // The dashboard's picture: issued by ACME, valid, with its expiry.
    let cert = status_cert(&node, "app.test").await;
    assert_eq!(
        (&cert["source"], &cert["acme"], &cert["app"]),
        (&"acme".into(), &"valid".into(), &"app".into()),
        "{cert}"
    );
    assert_eq!(cert["not_after"], expiry as i64, "{cert}");

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

/// The certificate `app.test` is served with (verified against Pebble's root).
async fn served_cert(pebble: &Pebble, port: u16) -> Option<anyedge_tls::acme::CertInfo> {
    let tls = pebble
        .connect(local(port), "app.test", &[b"http/1.1"])
        .await
        .ok()?;
    let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
    anyedge_tls::acme::CertInfo::of(der.as_ref()).ok()
}

/// The fault suite's CA outage: the CA (Pebble, behind a relay the test cuts) is unreachable
/// from 2 s before the renewal is due until 8 s after. The old certificate is served all along
/// (a client handshaking in a loop never fails), the renewal is retried with backoff (1 s
/// doubling to 4 s) while the CA is away, and it succeeds once the CA is back, before the old
/// certificate expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_due_while_the_ca_is_unreachable_is_retried_and_the_old_certificate_served() {
    let instance = HttpInstance::start("app", false).await;
    let tls_port = free_port();
    // 60 s certificates: renewal due when 20 s are left.
    let pebble = Pebble::start(PebbleOptions {
        tls_port,
        validity_secs: Some(60),
    })
    .await;
    let pebble_addr: SocketAddr = pebble
        .directory
        .strip_prefix("https://")
        .and_then(|d| d.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap();
    // Pebble names its other endpoints after the Host the client asked for: every request of
    // the node goes through the relay.
    let relay = anyedge_test_support::relay::Relay::start(pebble_addr).await;
    let directory = format!("https://127.0.0.1:{}/dir", relay.port);
    let state = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}",
        acme_section(
            &directory,
            &pebble.ca_roots,
            state.path(),
            "retry_min = \"1s\"\nretry_max = \"4s\""
        ),
        tls_app("app", "app.test", tls_port, instance.addr, false)
    );
    let node = start(&toml, state.path()).await;
    let first =
        anyedge_test_support::eventually("the first certificate", Duration::from_secs(60), || {
            served_cert(&pebble, tls_port)
        })
        .await;
    let lifetime = first.not_after - first.not_before;
    let due = first.not_after - lifetime / 3;
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let until = |t: f64| Duration::from_secs_f64((t - unix_now()).max(0.0));

    // Handshake continuously from now until the renewed certificate is served.
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
                match served_cert(&pebble, tls_port).await {
                    Some(_) => handshakes.fetch_add(1, Ordering::Relaxed),
                    None => failures.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Fixed points in time, not waits for a condition: the outage is set around the due time.
    tokio::time::sleep(until(due as f64 - 2.0)).await;
    relay.cut();
    let errors_before = metric(&node, "anyedge_acme_orders_total{result=\"error\"}");
    tokio::time::sleep(until(due as f64 + 8.0)).await;
    let failed_orders =
        metric(&node, "anyedge_acme_orders_total{result=\"error\"}") - errors_before;
    let during = served_cert(&pebble, tls_port)
        .await
        .expect("served during the outage");
    let status = std::fs::read_to_string(state.path().join("certs/app.test/status.json")).unwrap();
    relay.restore();
    let restored = std::time::Instant::now();
    let second = anyedge_test_support::eventually(
        "the renewed certificate once the CA is back",
        Duration::from_secs(30),
        || async {
            let info = served_cert(&pebble, tls_port).await?;
            (info.serial != first.serial).then_some(info)
        },
    )
    .await;
    let renewed_after = restored.elapsed();
    stop.store(true, Ordering::Relaxed);
    looping.await.unwrap();
    let (sent, failed) = (
        handshakes.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    println!(
        "| the ACME CA unreachable 10 s while a renewal is due | {sent} handshakes | {failed} | {failed_orders} renewals failed and were retried meanwhile (1 s, 2 s, 4 s apart); renewed {renewed_after:?} after the CA returned, {} s before the old certificate expired |",
        first.not_after - unix_now() as i64
    );
    assert_eq!(during.serial, first.serial, "the old certificate is served");
    assert!(status.contains("\"state\": \"failing\""), "{status}");
    assert!(
        failed_orders >= 2,
        "only {failed_orders} attempts while the CA was away"
    );
    assert!(
        failed_orders <= 5,
        "{failed_orders} attempts in 10 s: no backoff"
    );
    assert!(relay.refused() > 0, "the node did try the CA");
    assert_eq!(failed, 0, "handshakes failed while the CA was away");
    assert!(second.not_after > first.not_after);
    assert!(
        renewed_after < Duration::from_secs(10),
        "renewed {renewed_after:?} after the CA returned (retry_max is 4 s)"
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
    // The dashboard's picture says so too, with the CA's reason.
    let cert = status_cert(&node, "app.test").await;
    assert_eq!(
        (&cert["source"], &cert["acme"]),
        (&"none".into(), &"failing".into()),
        "{cert}"
    );
    assert!(
        cert["acme_error"]
            .as_str()
            .is_some_and(|e| e.contains("urn:ietf:params:acme:error:")),
        "{cert}"
    );
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
