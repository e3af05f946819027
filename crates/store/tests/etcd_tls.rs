//! The store's connection to an etcd that requires TLS and client certificates: with the
//! `[catalog]` TLS keys it lists and watches; without a client certificate it cannot.

use anyedge_config::EtcdConfig;
use anyedge_store::{connect, EtcdCatalog, Keys};
use anyedge_test_support::etcd::Etcd;
use anyedge_tls::cluster_ca;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reaches_etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = cluster_ca::new_ca().expect("ca");
    let server = cluster_ca::issue_node(&ca, "etcd").expect("server cert");
    let client = cluster_ca::issue_node(&ca, "node-1").expect("client cert");
    let ca_path = write(dir.path(), "ca.pem", &ca.cert);
    let etcd = Etcd::start_tls(
        ca_path.clone(),
        write(dir.path(), "etcd.pem", &server.cert),
        write(dir.path(), "etcd-key.pem", &server.key),
    );
    let cfg = EtcdConfig {
        endpoints: vec![etcd.url()],
        ca: Some(ca_path.clone()),
        cert: Some(write(dir.path(), "client.pem", &client.cert)),
        key: Some(write(dir.path(), "client-key.pem", &client.key)),
        secret_key_file: None,
    };
    let mut c = connect(&cfg).await.expect("connect over TLS");
    c.put("/anyedge/apps/x", "not an app", None)
        .await
        .expect("put over TLS");
    let catalog = EtcdCatalog::start(cfg.clone(), Keys::default(), edge());
    assert!(
        catalog.first_sync(Duration::from_secs(10)).await,
        "{}",
        etcd.log()
    );
    assert!(catalog.status().connected());

    // Trusting the CA but presenting no certificate: refused.
    let anonymous = EtcdConfig {
        cert: None,
        key: None,
        ..cfg
    };
    let refused = async {
        let mut c = connect(&anonymous).await.ok()?;
        c.get("/anyedge/apps/x", None).await.ok()
    };
    assert!(refused.await.is_none());
}

/// The catalog as an edge node sees it: every change to apps and instances concerns it.
fn edge() -> anyedge_store::Viewer {
    anyedge_store::Viewer {
        node: "edge".into(),
        routes: true,
        backhaul: true,
    }
}
