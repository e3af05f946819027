//! Binary upgrades by socket hand-over, as operators run them: `anyedge run --upgrade` with the
//! same config takes every listening socket over from the running node through its control
//! socket, and the old node drains. Under steady load from clients that never retry (HTTP/1.1
//! keep-alive clients that reconnect only after a `Connection: close`, clients that open a
//! connection per request, and HTTP/2 clients that send again only what a GOAWAY proves
//! unprocessed), 20 upgrades in a row lose no request and refuse no connection. A
//! failed upgrade (no node at the socket, a new process that cannot start, a malformed
//! message) leaves the running node serving; the control socket is owner-only; TLS sessions
//! resume across an upgrade; `anyedge upgrade` waits for the new process (for systemd).

mod handover;

use anyedge_core::control::{Message, MAGIC};
use anyedge_test_support::free_port;
use anyedge_test_support::{eventually, process::Proc};
use handover::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_upgrades_under_load_lose_nothing() {
    let setup = Setup::new().await;
    let mut current = setup.run("node-0", false);
    setup.serving().await;
    let first = setup.control_status().await;
    assert_eq!(first, (current.pid(), 1));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let addr = local(setup.port);
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(tokio::spawn(keep_alive_client(
            addr,
            stop.clone(),
            tally.clone(),
        )));
    }
    for _ in 0..4 {
        clients.push(tokio::spawn(per_request_client(
            addr,
            stop.clone(),
            tally.clone(),
        )));
    }
    for _ in 0..2 {
        clients.push(tokio::spawn(h2_client(addr, stop.clone(), tally.clone())));
    }
    let ok_since = |t: &Tally| t.ok.load(Ordering::SeqCst);
    eventually("load runs", WAIT, || {
        let n = ok_since(&tally);
        async move { (n > 100).then_some(()) }
    })
    .await;

    for generation in 2..=UPGRADES + 1 {
        let name = format!("node-{}", generation - 1);
        let mut next = setup.run(&name, true);
        let (pid, control) = (next.pid(), setup.control.clone());
        eventually(
            &format!("{name} answers on the control socket"),
            WAIT,
            || {
                let c = control.clone();
                async move { status(&c).filter(|s| *s == (pid, generation)) }
            },
        )
        .await;
        let code = exited(&mut current, "the old node drains and exits").await;
        assert_eq!(
            code,
            Some(0),
            "the old node's exit; log {}",
            setup.log(&name).display()
        );
        assert!(next.try_exit_code().is_none(), "{name} runs");
        // The new node serves the load on its own before the next upgrade.
        let before = ok_since(&tally);
        eventually("requests go on after the upgrade", WAIT, || {
            let n = ok_since(&tally);
            async move { (n > before + 200).then_some(()) }
        })
        .await;
        current = next;
    }

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let metrics = admin_metrics(setup.admin).await.unwrap_or_default();
    let unprocessed = tally.h2_unprocessed.load(Ordering::SeqCst);
    let (sent, ok, failed, refused, closes) = (
        tally.sent.load(Ordering::SeqCst),
        tally.ok.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.connect_errors.load(Ordering::SeqCst),
        tally.closed_by_server.load(Ordering::SeqCst),
    );
    eprintln!(
        "{UPGRADES} upgrades: {sent} requests sent, {ok} answered, {failed} failed, {refused} connection errors, {closes} keep-alive connections closed by Connection: close, {unprocessed} HTTP/2 requests refused unprocessed by a GOAWAY and sent on a new connection"
    );
    let errors = tally.errors.lock().map(|e| e.clone()).unwrap_or_default();
    assert_eq!((failed, refused), (0, 0), "errors: {errors:?}");
    assert_eq!(ok, sent);
    assert!(
        closes >= UPGRADES,
        "keep-alive clients were told to reconnect at each upgrade ({closes})"
    );
    assert!(
        metrics.contains(&format!("anyedge_process_generation {}", UPGRADES + 1)),
        "{metrics}"
    );
    current.signal(libc::SIGTERM);
    assert_eq!(exited(&mut current, "the last node stops").await, Some(0));
    assert!(
        !setup.control.exists(),
        "the socket file goes with the last node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_plain_start_is_refused_and_an_upgrade_of_nothing_fails_cleanly() {
    let setup = Setup::new().await;
    let mut node = setup.run("node", false);
    setup.serving().await;
    setup.control_status().await;

    // The same config without --upgrade: refused before anything is bound.
    let mut second = setup.run("second", false);
    assert_eq!(
        exited(&mut second, "a second plain start exits").await,
        Some(1)
    );
    let log = std::fs::read_to_string(setup.log("second")).unwrap_or_default();
    assert!(log.contains("anyedge run --upgrade"), "{log}");

    // --upgrade with a control socket nobody answers on.
    let elsewhere = setup.dir.path().join("elsewhere.toml");
    let text = std::fs::read_to_string(&setup.config).expect("config");
    let text = text.replace(
        &setup.control.display().to_string(),
        &setup.dir.path().join("nobody.sock").display().to_string(),
    );
    std::fs::write(&elsewhere, text).expect("config");
    let args = [
        "run",
        "--config",
        elsewhere.to_str().expect("utf-8"),
        "--upgrade",
    ];
    let mut orphan = Proc::spawn(bin(), &args, &setup.log("orphan"));
    assert_eq!(
        exited(&mut orphan, "an upgrade of nothing exits").await,
        Some(1)
    );
    let log = std::fs::read_to_string(setup.log("orphan")).unwrap_or_default();
    assert!(log.contains("upgrade failed: cannot reach"), "{log}");

    assert_eq!(
        get_once(local(setup.port)).await.ok().as_deref(),
        Some("200")
    );
    assert_eq!(status(&setup.control).map(|s| s.0), Some(node.pid()));
    assert!(node.try_exit_code().is_none());
    node.signal(libc::SIGTERM);
    assert_eq!(exited(&mut node, "the node stops").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving_and_ports_follow_the_config() {
    let setup = Setup::new().await;
    let mut old = setup.run("old", false);
    setup.serving().await;
    let (old_pid, _) = setup.control_status().await;

    // The new config adds a port someone else holds: the new process receives the sockets,
    // fails to open that port, and exits without telling the old one to drain.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let inst = std::fs::read_to_string(&setup.config).expect("config");
    let inst_addr = inst
        .split("address = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("instance address")
        .parse()
        .expect("addr");
    let extra = format!(", {{ port = {taken}, bind = \"127.0.0.1\", handlers = [\"http\"] }}");
    std::fs::write(
        &setup.config,
        config_text(&setup.control, setup.port, inst_addr, &extra, ""),
    )
    .expect("config");
    let mut failed = setup.run("failed", true);
    assert_eq!(
        exited(&mut failed, "the failed upgrade exits").await,
        Some(1)
    );
    let log = std::fs::read_to_string(setup.log("failed")).unwrap_or_default();
    assert!(log.contains("cannot start"), "{log}");

    // The old node still serves, on the app port and the control socket.
    for _ in 0..20 {
        assert_eq!(
            get_once(local(setup.port)).await.ok().as_deref(),
            Some("200")
        );
    }
    assert_eq!(status(&setup.control), Some((old_pid, 1)));
    assert!(
        old.try_exit_code().is_none(),
        "the old node was not told to drain"
    );

    // A garbled message gets an error back and changes nothing.
    let answer = exchange(&setup.control, b"anyedge-control/1 JUMP\n");
    assert!(matches!(answer, Some(Message::Error(_))), "{answer:?}");
    let answer = exchange(&setup.control, &[0xff; 300]);
    assert!(matches!(answer, Some(Message::Error(_))), "{answer:?}");
    let answer = exchange(&setup.control, format!("{MAGIC} DRAIN\n").as_bytes());
    assert!(
        matches!(answer, Some(Message::Error(_))),
        "a DRAIN without a hand-over: {answer:?}"
    );

    // With the port free, the same upgrade goes through.
    drop(blocker);
    let mut new = setup.run("new", true);
    let (new_pid, control) = (new.pid(), setup.control.clone());
    eventually("the new node answers on the control socket", WAIT, || {
        let c = control.clone();
        async move { status(&c).filter(|s| *s == (new_pid, 2)) }
    })
    .await;
    assert_eq!(exited(&mut old, "the old node drains").await, Some(0));
    assert_eq!(get_once(local(taken)).await.ok().as_deref(), Some("200"));
    assert_eq!(
        get_once(local(setup.port)).await.ok().as_deref(),
        Some("200")
    );

    // An upgrade to a config without that port: the handed-over socket is closed.
    std::fs::write(
        &setup.config,
        config_text(&setup.control, setup.port, inst_addr, "", ""),
    )
    .expect("config");
    let mut last = setup.run("last", true);
    let (last_pid, control) = (last.pid(), setup.control.clone());
    eventually("the last node answers on the control socket", WAIT, || {
        let c = control.clone();
        async move { status(&c).filter(|s| *s == (last_pid, 3)) }
    })
    .await;
    assert_eq!(exited(&mut new, "the previous node drains").await, Some(0));
    let refused = tokio::net::TcpStream::connect(local(taken)).await;
    assert!(refused.is_err(), "the port the config dropped is closed");
    assert_eq!(
        get_once(local(setup.port)).await.ok().as_deref(),
        Some("200")
    );
    let log = std::fs::read_to_string(setup.log("last")).unwrap_or_default();
    assert!(log.contains("not in this config: closed"), "{log}");
    last.signal(libc::SIGTERM);
    assert_eq!(exited(&mut last, "the last node stops").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_owner_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let setup = Setup::new().await;
    let mut node = setup.run("node", false);
    setup.serving().await;
    setup.control_status().await;
    let meta = std::fs::metadata(&setup.control).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    node.signal(libc::SIGTERM);
    assert_eq!(exited(&mut node, "the node stops").await, Some(0));
    assert!(!setup.control.exists(), "removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_command_waits_for_the_new_process_and_tells_systemd() {
    use std::os::unix::net::UnixDatagram;
    let setup = Setup::new().await;
    let mut old = setup.run("old", false);
    setup.serving().await;
    setup.control_status().await;
    let notify_path = setup.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    // As systemd's ExecReload runs it: it must end, with the new process left serving.
    let upgrade = |config: PathBuf, name: &'static str| {
        let (out, err) = (setup.log(&format!("{name}.out")), setup.log(name));
        let admin = setup.admin.to_string();
        let notify_path = notify_path.clone();
        tokio::task::spawn_blocking(move || {
            let status = std::process::Command::new(bin())
                .args(["upgrade", "--config"])
                .arg(&config)
                .args(["--admin-listen", &admin])
                .env("NOTIFY_SOCKET", &notify_path)
                .env("ANYEDGE_LOG", "info")
                .stdin(std::process::Stdio::null())
                .stdout(std::fs::File::create(&out).expect("out"))
                .stderr(std::fs::File::create(err).expect("err"))
                .status()
                .expect("anyedge upgrade");
            (
                status.code(),
                std::fs::read_to_string(out).unwrap_or_default(),
            )
        })
    };
    let (code, out) = upgrade(setup.config.clone(), "upgrade")
        .await
        .expect("join");
    assert_eq!(
        code,
        Some(0),
        "{out}; log {}",
        setup.log("upgrade").display()
    );
    let new_pid: u32 = out
        .trim()
        .strip_prefix("upgraded: pid ")
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let _stray = Stray(new_pid);
    assert_eq!(status(&setup.control), Some((new_pid, 2)));
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("a notification");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(message, format!("READY=1\nMAINPID={new_pid}\n"));
    assert_eq!(exited(&mut old, "the old node drains").await, Some(0));
    assert_eq!(
        get_once(local(setup.port)).await.ok().as_deref(),
        Some("200")
    );

    // An upgrade that cannot happen (nobody at the socket) ends with 1.
    let elsewhere = setup.dir.path().join("elsewhere.toml");
    let text = std::fs::read_to_string(&setup.config).expect("config");
    let text = text.replace(
        &setup.control.display().to_string(),
        &setup.dir.path().join("nobody.sock").display().to_string(),
    );
    std::fs::write(&elsewhere, text).expect("config");
    let (code, _) = upgrade(elsewhere, "failed").await.expect("join");
    assert_eq!(code, Some(1));
    assert_eq!(status(&setup.control).map(|s| s.0), Some(new_pid));

    // The new process is not our child: stop it by its pid.
    // SAFETY: kill(2) on the pid of the process this test started (through `anyedge upgrade`).
    unsafe { libc::kill(new_pid as libc::pid_t, libc::SIGTERM) };
    eventually("the new node stops", WAIT, || async move {
        gone(new_pid).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_across_an_upgrade() {
    use rustls::HandshakeKind::{Full, Resumed};
    let setup = Setup::new().await;
    let pki = anyedge_test_support::pki::Pki::new();
    let (cert, key, _) = pki.issue("alpha", &["alpha.test"]);
    let tls_port = free_port();
    let inst = std::fs::read_to_string(&setup.config).expect("config");
    let inst_addr = inst
        .split("address = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("instance address")
        .parse()
        .expect("addr");
    let tls =
        format!(", {{ port = {tls_port}, bind = \"127.0.0.1\", handlers = [\"tls\", \"http\"] }}");
    let certificates = format!(
        "  [[apps.certificates]]\n  cert = \"{}\"\n  key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    std::fs::write(
        &setup.config,
        config_text(&setup.control, setup.port, inst_addr, &tls, &certificates),
    )
    .expect("config");
    let mut old = setup.run("old", false);
    setup.serving().await;
    let client = pki.client(&[b"http/1.1"]);
    let addr = local(tls_port);
    assert_eq!(tls_get(&client, addr).await, Some(Full));
    assert_eq!(
        tls_get(&client, addr).await,
        Some(Resumed),
        "resumption works"
    );

    let mut new = setup.run("new", true);
    let (pid, control) = (new.pid(), setup.control.clone());
    eventually("the new node answers on the control socket", WAIT, || {
        let c = control.clone();
        async move { status(&c).filter(|s| s.0 == pid) }
    })
    .await;
    assert_eq!(exited(&mut old, "the old node drains").await, Some(0));
    assert_eq!(
        tls_get(&client, addr).await,
        Some(Resumed),
        "a ticket of the old process resumes in the new one"
    );
    new.signal(libc::SIGTERM);
    assert_eq!(exited(&mut new, "the new node stops").await, Some(0));
}
