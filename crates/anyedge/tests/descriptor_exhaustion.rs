//! With its descriptors used up, the node must not spin or stop accepting for good: accept()
//! fails with EMFILE, backs off, and carries on once descriptors are free again.

use anyedge_test_support::client::{connect, echo};
use anyedge_test_support::instances::FakeInstance;
use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_backs_off_and_recovers() {
    let inst = FakeInstance::echo("").await;
    let (port, admin) = (free_port(), local(free_port()));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("anyedge.toml");
    std::fs::write(
        &path,
        format!(
            "[[apps]]\nname = \"tight\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [] }} ]\n  [[apps.instances]]\n  id = \"e\"\n  address = \"{}\"\n",
            inst.addr
        ),
    )
    .expect("config");
    let bin = Path::new(env!("CARGO_BIN_EXE_anyedge"));
    let mut node = Proc::anyedge_run(bin, &path, admin, &dir.path().join("node.log"), Some(96));
    eventually("node serves", Duration::from_secs(10), || async {
        let mut s = connect(local(port)).await.ok()?;
        (echo(&mut s, b"up").await.ok()? == b"up").then_some(())
    })
    .await;

    // Far more connections than 96 descriptors allow: each costs the node two.
    let mut flood = Vec::new();
    for _ in 0..120 {
        if let Ok(mut s) = connect(local(port)).await {
            let _ = s.write_all(b"x").await;
            flood.push(s);
        }
    }
    // The admin listener is out of descriptors too: the log says it (stderr is already open).
    let log = dir.path().join("node.log");
    eventually("EMFILE logged", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("accept failed; backing off").then_some(())
    })
    .await;
    assert!(
        node.try_exit_code().is_none(),
        "the node survives descriptor exhaustion"
    );

    drop(flood);
    eventually(
        "node accepts again once descriptors are free",
        Duration::from_secs(20),
        || async {
            let mut s = connect(local(port)).await.ok()?;
            (echo(&mut s, b"back").await.ok()? == b"back").then_some(())
        },
    )
    .await;
    assert!(node.try_exit_code().is_none());
    let m = admin_metrics(admin).await.expect("admin answers again");
    let line = m
        .lines()
        .find(|l| l.starts_with("anyedge_accept_errors_total "))
        .expect("metric");
    assert_ne!(
        line.trim_start_matches("anyedge_accept_errors_total ")
            .trim(),
        "0",
        "{line}"
    );
}

/// `/metrics`, or `None` while the admin listener cannot take a connection.
async fn admin_metrics(admin: SocketAddr) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut s = connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}
