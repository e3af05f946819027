//! The `anyedge` binary as operators run it: reload on file change and SIGHUP (add a port,
//! remove one, swap targets) while an open connection keeps echoing; an invalid file leaves
//! the last good config serving; SIGTERM drains.

use anyedge_test_support::client::{connect, echo, read_line};
use anyedge_test_support::instances::FakeInstance;
use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

// Generous: the binary starts and reloads in well under a second, but CI machines may be busy.
const WAIT: Duration = Duration::from_secs(30);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn app(name: &str, port: u16, target: SocketAddr) -> String {
    format!(
        "[[apps]]\nname = \"{name}\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [] }} ]\n  [[apps.instances]]\n  id = \"{name}-1\"\n  address = \"{target}\"\n"
    )
}

/// Replace the file the way config managers do: write a temporary file, rename it over.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

async fn tag_of(port: u16) -> Option<String> {
    let mut s = connect(local(port)).await.ok()?;
    read_line(&mut s).await.ok()
}

async fn admin_get(admin: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect(admin).await.expect("admin connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("admin write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("admin read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_diff_and_keeps_open_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("anyedge.toml");
    let (a1, a2, b1) = (
        FakeInstance::echo("a1").await,
        FakeInstance::echo("a2").await,
        FakeInstance::echo("b1").await,
    );
    let (pa, pb, padmin) = (free_port(), free_port(), free_port());
    let head = "[node]\ndrain_timeout = \"20s\"\n\n";
    write_config(&path, &format!("{head}{}", app("a", pa, a1.addr)));
    let bin = Path::new(env!("CARGO_BIN_EXE_anyedge"));
    let admin = local(padmin);
    let mut node = Proc::anyedge_run(bin, &path, admin, &dir.path().join("node.log"), None);
    eventually("app a serves", WAIT, || async {
        tag_of(pa).await.filter(|t| t == "a1")
    })
    .await;

    // A connection opened before every reload below; it must keep echoing throughout.
    let mut old = connect(local(pa)).await.expect("connect");
    assert_eq!(read_line(&mut old).await.expect("tag"), "a1");
    assert_eq!(
        echo(&mut old, b"before\n").await.expect("echo"),
        b"before\n"
    );

    // File change: add app b on a new port, and swap a's target.
    write_config(
        &path,
        &format!("{head}{}{}", app("a", pa, a2.addr), app("b", pb, b1.addr)),
    );
    eventually("new port serves", WAIT, || async {
        tag_of(pb).await.filter(|t| t == "b1")
    })
    .await;
    eventually("a's new target takes new connections", WAIT, || async {
        tag_of(pa).await.filter(|t| t == "a2")
    })
    .await;
    assert_eq!(
        echo(&mut old, b"after add\n")
            .await
            .expect("old connection survives"),
        b"after add\n"
    );

    // An invalid file: reported, and the config in force stays.
    write_config(
        &path,
        &format!(
            "{head}{}[[apps]]\nname = \"broken\"\nbogus_key = 1\n",
            app("a", pa, a2.addr)
        ),
    );
    eventually("reload error reported", WAIT, || async {
        let health = admin_get(admin, "/healthz").await;
        health.contains("bogus_key").then_some(())
    })
    .await;
    assert!(admin_get(admin, "/metrics")
        .await
        .contains("anyedge_config_reloads_total{result=\"error\"} 1"));
    assert_eq!(
        tag_of(pb).await.as_deref(),
        Some("b1"),
        "old config still serves b"
    );
    assert_eq!(
        echo(&mut old, b"after invalid\n").await.expect("echo"),
        b"after invalid\n"
    );

    // SIGHUP with the file fixed and b removed: b's port closes.
    let text = format!("{head}{}", app("a", pa, a2.addr));
    std::fs::write(&path, &text).expect("write in place");
    node.signal(libc::SIGHUP);
    eventually("removed port stops listening", WAIT, || async {
        connect(local(pb)).await.is_err().then_some(())
    })
    .await;
    assert_eq!(tag_of(pa).await.as_deref(), Some("a2"));
    assert_eq!(
        echo(&mut old, b"after remove\n").await.expect("echo"),
        b"after remove\n"
    );

    // SIGTERM: stop accepting, keep the open connection until it ends, then exit 0.
    node.signal(libc::SIGTERM);
    eventually("listener closed on SIGTERM", WAIT, || async {
        connect(local(pa)).await.is_err().then_some(())
    })
    .await;
    assert_eq!(
        echo(&mut old, b"while draining\n")
            .await
            .expect("drain keeps it"),
        b"while draining\n"
    );
    assert!(node.try_exit_code().is_none(), "exits only when drained");
    drop(old);
    let code = eventually("node exits after the last connection", WAIT, || {
        std::future::ready(node.try_exit_code())
    })
    .await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_sample_json_runs_and_reloads_through_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    let (t1, t2) = (
        FakeInstance::echo("t1").await,
        FakeInstance::echo("t2").await,
    );
    let (p1, p2) = (free_port(), free_port());
    let json = |ports: &str| {
        format!(
            "{{\n  \"Apps\": [\n    {{\n      \"Name\": \"five-thousand\",\n      \"Ports\": [{ports}],\n      \"Targets\": [\"{}\", \"bad.target.for.testing:6003\"]\n    }},\n    {{\n      \"Name\": \"six-thousand\",\n      \"Ports\": [{}],\n      \"Targets\": [\"{}\"]\n    }}\n  ]\n}}\n",
            t1.addr,
            free_port(),
            t2.addr
        )
    };
    write_config(&path, &json(&p1.to_string()));
    let admin = local(free_port());
    let bin = Path::new(env!("CARGO_BIN_EXE_anyedge"));
    let mut node = Proc::anyedge_run(bin, &path, admin, &dir.path().join("node.log"), None);
    eventually("work sample serves", WAIT, || async {
        tag_of(p1).await.filter(|t| t == "t1")
    })
    .await;
    write_config(&path, &json(&format!("{p1}, {p2}")));
    eventually("added port serves", WAIT, || async {
        tag_of(p2).await.filter(|t| t == "t1")
    })
    .await;
    // A repeated port is invalid; the running config stays.
    write_config(&path, &json(&format!("{p1}, {p1}")));
    eventually("the repeated port is rejected", WAIT, || async {
        admin_get(admin, "/metrics")
            .await
            .contains("anyedge_config_reloads_total{result=\"error\"} 1")
            .then_some(())
    })
    .await;
    assert_eq!(tag_of(p2).await.as_deref(), Some("t1"));
    node.signal(libc::SIGINT);
    let code = eventually("node exits on SIGINT", WAIT, || {
        std::future::ready(node.try_exit_code())
    })
    .await;
    assert_eq!(code, Some(0));
}
