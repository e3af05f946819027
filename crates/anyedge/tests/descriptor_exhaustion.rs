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

/// Each listening socket is held by one descriptor (its accept loop's; a copy is made only to
/// hand it over on an upgrade), so a node with N ports on S shards holds N x S listener
/// descriptors, not twice that: 10,000 ports on two shards fit a limit of 20,000 and some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_is_held_by_one_descriptor() {
    const PORTS: usize = 300;
    const SHARDS: usize = 2;
    let inst = FakeInstance::echo("").await;
    let admin = local(free_port());
    let ports: Vec<u16> = (0..PORTS).map(|_| free_port()).collect();
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ port = {p}, bind = \"127.0.0.1\", handlers = [] }}"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("anyedge.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nthreads = {SHARDS}\n[[apps]]\nname = \"many\"\n  [[apps.services]]\n  ports = [ {} ]\n  [[apps.instances]]\n  id = \"e\"\n  address = \"{}\"\n",
            list.join(", "),
            inst.addr
        ),
    )
    .expect("config");
    let bin = Path::new(env!("CARGO_BIN_EXE_anyedge"));
    let node = Proc::anyedge_run(bin, &path, admin, &dir.path().join("node.log"), None);
    for port in [ports[0], ports[PORTS - 1]] {
        eventually("node serves", Duration::from_secs(20), || async {
            let mut s = connect(local(port)).await.ok()?;
            (echo(&mut s, b"up").await.ok()? == b"up").then_some(())
        })
        .await;
    }
    // Every port's sockets (the config's ports open in their own order, not the file's).
    let pid = node.pid();
    let (held, sockets) = eventually("every listener open", Duration::from_secs(20), || async {
        let (held, sockets) = listener_descriptors(pid, admin.port());
        (sockets >= PORTS * SHARDS).then_some((held, sockets))
    })
    .await;
    eprintln!("{PORTS} ports on {SHARDS} shards: {sockets} listening sockets, {held} descriptors on them, {} descriptors in all", anyedge_test_support::fd_count(node.pid()));
    assert_eq!(sockets, PORTS * SHARDS);
    assert_eq!(held, sockets, "one descriptor per listening socket");
}

/// Descriptors of process `pid` on listening TCP sockets other than the admin listener's (on
/// `admin_port`), and how many sockets they are.
fn listener_descriptors(pid: u32, admin_port: u16) -> (usize, usize) {
    let mut listening = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if f.get(3) == Some(&"0A") && port != Some(admin_port) {
                if let Some(inode) = f.get(9) {
                    listening.insert(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let mut held = 0;
    let mut sockets = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.display().to_string();
        if listening.contains(&target) {
            held += 1;
            sockets.insert(target);
        }
    }
    (held, sockets.len())
}
