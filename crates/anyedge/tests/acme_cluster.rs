//! ACME in a cluster, with a real etcd and a real Pebble: two edges on 127.0.0.2 and 127.0.0.3
//! (the same TLS port, as Pebble's `tlsPort` is one number), Pebble's DNS pointing the hostname
//! at the edge that did not order. The other edge answers the validation from the challenge the
//! issuing edge published in etcd; one order is made in all; both edges serve the same
//! certificate; its private key is stored sealed.

#![allow(clippy::unwrap_used)] // tests may unwrap

use anyedge::node::Node;
use anyedge_config::{CatalogConfig, Config, EtcdConfig};
use anyedge_test_support::etcd::Etcd;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::pebble::{Pebble, PebbleOptions};
use anyedge_test_support::{eventually, free_port};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

const EDGE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const EDGE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const EDGE_C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// What every edge of the test shares.
struct Shared<'a> {
    port: u16,
    instance: SocketAddr,
    pebble: &'a Pebble,
    etcd: &'a Etcd,
    secret: &'a Path,
}

impl Shared<'_> {
    /// A node `id` serving `host` on `ip:port` (TLS then HTTP), with ACME state in etcd.
    fn config(&self, id: &str, host: &str, ip: Ipv4Addr) -> Config {
        let toml = format!(
            "[node]\nid = \"{id}\"\n\
             [acme]\ndirectory = \"{}\"\ncontact = \"mailto:ops@example.com\"\nca_roots = \"{}\"\n\
             [[apps]]\nname = \"app\"\nhostnames = [\"{host}\"]\n  [[apps.services]]\n  ports = [ {{ port = {}, bind = \"{ip}\", handlers = [\"tls\", \"http\"] }} ]\n  [[apps.instances]]\n  id = \"app-1\"\n  address = \"{}\"\n",
            self.pebble.directory,
            self.pebble.ca_roots.display(),
            self.port,
            self.instance,
        );
        let mut config = anyedge_config::parse_with_base(&toml, "edge.toml", None)
            .unwrap_or_else(|d| panic!("{d}"));
        // The apps of an etcd node come from etcd; here, to keep the test about ACME, from the
        // file, with the catalog settings an etcd node has.
        config.catalog = CatalogConfig::Etcd(EtcdConfig {
            endpoints: vec![self.etcd.url()],
            ca: None,
            cert: None,
            key: None,
            secret_key_file: Some(self.secret.to_path_buf()),
        });
        config
    }
}

async fn start(config: Config) -> Node {
    Node::start(config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("node starts")
}

/// The DER of the certificate `host` is served with at `addr`, trusting only Pebble's root.
async fn served(pebble: &Pebble, addr: SocketAddr, host: &str) -> Option<Vec<u8>> {
    let tls = pebble.connect(addr, host, &[b"http/1.1"]).await.ok()?;
    let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
    Some(der.as_ref().to_vec())
}

fn metric(node: &Node, series: &str) -> u64 {
    let text = node.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn orders(node: &Node) -> u64 {
    metric(node, "anyedge_acme_orders_total{result=\"ok\"}")
        + metric(node, "anyedge_acme_orders_total{result=\"error\"}")
}

async fn etcd_value(client: &mut etcd_client::Client, key: &str) -> Option<String> {
    let resp = client.get(key, None).await.ok()?;
    let kv = resp.kvs().first()?;
    Some(String::from_utf8_lossy(kv.value()).into_owned())
}

fn certs_list(etcd: &Etcd) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anyedge"))
        .args(["certs", "list", "--etcd", &etcd.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_reaches_the_edge_that_did_not_order_and_both_serve_one_certificate() {
    let etcd = Etcd::start();
    let instance = HttpInstance::start("app", false).await;
    let port = free_port();
    let pebble = Pebble::start(PebbleOptions {
        tls_port: port,
        validity_secs: None,
    })
    .await;
    // Pebble validates at edge B (nothing else listens on 127.0.0.3, and nothing on
    // 127.0.0.1 at that port, Pebble's default): the order succeeds only if B answers with
    // the challenge A published. A is the only one wanting the name at first, so it takes
    // the lock and orders.
    pebble.set_address("app.test", EDGE_B).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster.secret");
    std::fs::write(
        &secret,
        anyedge_tls::acme::SecretKey::generate_hex().unwrap(),
    )
    .unwrap();
    let shared = Shared {
        port,
        instance: instance.addr,
        pebble: &pebble,
        etcd: &etcd,
        secret: &secret,
    };

    // Edge B serves only a wildcard name (never ordered) on the port, but follows the catalog.
    let b_idle = shared.config("edge-b", "*.b.test", EDGE_B);
    let b = start(b_idle).await;
    let a = start(shared.config("edge-a", "app.test", EDGE_A)).await;

    // While A orders, the lock names it, and `certs list --etcd` says so.
    let mut client = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    let listing = eventually(
        "certs list showing edge-a holding the lock",
        Duration::from_secs(30),
        || {
            let listing = certs_list(&etcd);
            async move {
                let line = listing
                    .lines()
                    .find(|l| l.starts_with("app.test"))?
                    .to_string();
                line.contains("edge-a").then_some(listing)
            }
        },
    )
    .await;
    assert!(
        listing.lines().next().unwrap().contains("LOCK"),
        "{listing}"
    );

    // Now B wants the name too: it finds the lock taken and waits for A's result.
    b.reload(shared.config("edge-b", "app.test", EDGE_B));

    let at_a = SocketAddr::from((EDGE_A, port));
    let at_b = SocketAddr::from((EDGE_B, port));
    let der_a = eventually(
        "edge A serving a certificate from Pebble",
        Duration::from_secs(60),
        || served(&pebble, at_a, "app.test"),
    )
    .await;
    let der_b = eventually(
        "edge B serving the same certificate",
        Duration::from_secs(30),
        || {
            let want = der_a.clone();
            let pebble = &pebble;
            async move {
                served(pebble, at_b, "app.test")
                    .await
                    .filter(|d| *d == want)
            }
        },
    )
    .await;
    assert_eq!(der_a, der_b);

    // One order in all, made by A; B never ordered.
    assert_eq!(orders(&a), 1, "{}", a.metrics().render());
    assert_eq!(metric(&a, "anyedge_acme_orders_total{result=\"ok\"}"), 1);
    assert_eq!(orders(&b), 0, "{}", b.metrics().render());

    // The catalog holds the chain in clear and the key sealed; the lock and challenge are gone.
    let stored = etcd_value(&mut client, "/anyedge/certs/app.test")
        .await
        .unwrap();
    assert!(stored.contains("\"schema\":1"), "{stored}");
    assert!(stored.contains("BEGIN CERTIFICATE"), "{stored}");
    assert!(stored.contains("AES-256-GCM"), "{stored}");
    assert!(!stored.contains("PRIVATE KEY"), "{stored}");
    let account = etcd_value(&mut client, "/anyedge/acme/account")
        .await
        .unwrap();
    assert!(
        account.contains("AES-256-GCM") && !account.contains("PRIVATE"),
        "{account}"
    );
    eventually(
        "the lock and the challenge released",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                let lock = etcd_value(&mut client, "/anyedge/acme/locks/app.test").await;
                let challenge = etcd_value(&mut client, "/anyedge/acme/challenges/app.test").await;
                (lock.is_none() && challenge.is_none()).then_some(())
            }
        },
    )
    .await;
    let listing = certs_list(&etcd);
    let line = listing.lines().find(|l| l.starts_with("app.test")).unwrap();
    assert!(line.contains("valid until 20"), "{listing}");
    assert!(line.contains("Pebble"), "{listing}");

    // A third edge started now serves the stored certificate without ordering.
    let c = start(shared.config("edge-c", "app.test", EDGE_C)).await;
    let at_c = SocketAddr::from((EDGE_C, port));
    assert_eq!(served(&pebble, at_c, "app.test").await, Some(der_a));
    assert_eq!(orders(&c), 0);

    for node in [&a, &b, &c] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn acme_on_the_etcd_store_without_a_secret_key_does_not_start() {
    let etcd_url = "http://127.0.0.1:9"; // never contacted: the node refuses first
    let toml = "[acme]\ncontact = \"mailto:ops@example.com\"\n";
    let mut config = anyedge_config::parse_with_base(toml, "edge.toml", None).unwrap();
    config.catalog = CatalogConfig::Etcd(EtcdConfig {
        endpoints: vec![etcd_url.to_string()],
        ca: None,
        cert: None,
        key: None,
        secret_key_file: None,
    });
    let err = Node::start(config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("secret_key_file"), "{err}");

    // A key file that is not 32 bytes is refused too, with its path.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("short.secret");
    std::fs::write(&bad, "abcd").unwrap();
    let mut config = anyedge_config::parse_with_base(toml, "edge.toml", None).unwrap();
    config.catalog = CatalogConfig::Etcd(EtcdConfig {
        endpoints: vec![etcd_url.to_string()],
        ca: None,
        cert: None,
        key: None,
        secret_key_file: Some(bad.clone()),
    });
    let err = Node::start(config, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("short.secret"), "{err}");
}
