//! `[node] steering = "sk_lookup"` with the real binary, as root, each test in a network
//! namespace of its own (loopback only; the node, its instances and the clients all in it):
//! the work-sample JSON through one listening socket per family and shard, 2,000 ports of one
//! app, a reload adding and removing ports under load, and a crashed node replaced by one that
//! takes the pinned maps over. Skipped, with the reason printed, without root.

use anyedge_steering::netns;
use anyedge_test_support::client::{connect, echo, read_line};
use anyedge_test_support::eventually;
use anyedge_test_support::instances::FakeInstance;
use anyedge_test_support::process::Proc;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const ADMIN: u16 = 9180;

/// What a test gets: a directory of its own and a pin directory on bpffs (removed at the end).
struct Ctx {
    dir: tempfile::TempDir,
    pins: PathBuf,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "not root: sk_lookup needs CAP_BPF, CAP_NET_ADMIN and a network namespace".into(),
        );
    }
    if let Err(e) = netns::mount_bpffs() {
        return Some(format!("cannot mount bpffs at /sys/fs/bpf: {e}"));
    }
    None
}

/// Run `test` on a runtime whose thread is in a new network namespace; every process it
/// starts is in that namespace too.
fn in_netns<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/anyedge-test-{}-{name}",
        std::process::id()
    ));
    let t = std::thread::spawn(move || {
        netns::enter_new().expect("new network namespace");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ctx = Ctx {
            dir: tempfile::tempdir().expect("tempdir"),
            pins,
        };
        rt.block_on(test(ctx));
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

/// `anyedge run` with sk_lookup steering, pinned under `ctx.pins`, logging to `log`.
fn run(ctx: &Ctx, config: &Path, log: &str) -> Proc {
    run_with(ctx, config, log, &[])
}

fn run_with(ctx: &Ctx, config: &Path, log: &str, extra: &[&str]) -> Proc {
    let pins = ctx.pins.display().to_string();
    let config = config.display().to_string();
    let admin = local(ADMIN).to_string();
    let mut args = vec![
        "run",
        "--config",
        &config,
        "--admin-listen",
        &admin,
        "--steering",
        "sk_lookup",
        "--bpf-pin-dir",
        &pins,
    ];
    args.extend(extra);
    Proc::spawn(bin(), &args, &ctx.dir.path().join(log))
}

async fn tag_of(port: u16) -> Option<String> {
    let mut s = connect(local(port)).await.ok()?;
    let tag = tokio::time::timeout(Duration::from_secs(2), read_line(&mut s)).await;
    tag.ok()?.ok()
}

async fn refused(port: u16) -> bool {
    match tokio::time::timeout(Duration::from_secs(2), connect(local(port))).await {
        Ok(Err(e)) => e.kind() == ErrorKind::ConnectionRefused,
        _ => false,
    }
}

async fn metric(name: &str) -> Option<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect(local(ADMIN)).await.ok()?;
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let line = out.lines().find(|l| l.starts_with(&format!("{name} ")))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// Listening sockets in this namespace, by port (`/proc/thread-self/net/tcp{,6}`, state 0A).
fn listeners() -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for f in ["tcp", "tcp6"] {
        let path = format!("/proc/thread-self/net/{f}");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) != Some(&"0A") {
                continue;
            }
            let port = cols.get(1).and_then(|c| c.rsplit(':').next());
            if let Some(port) = port.and_then(|p| u16::from_str_radix(p, 16).ok()) {
                *out.entry(port).or_default() += 1;
            }
        }
    }
    out
}

/// The node's own listening sockets besides admin: none on an app port, and one per shard
/// for each of the two steering listeners (IPv4 and IPv6 loopback).
fn assert_one_listener_per_shard(app_ports: &[u16], others: &[u16], shards: usize) {
    let l = listeners();
    for p in app_ports {
        assert!(
            !l.contains_key(p),
            "a socket listens on app port {p}: {l:?}"
        );
    }
    let steering: Vec<(&u16, &usize)> = l
        .iter()
        .filter(|(p, _)| **p != ADMIN && !others.contains(p))
        .collect();
    assert_eq!(
        steering.len(),
        2,
        "steering listeners: {steering:?} of {l:?}"
    );
    for (port, n) in steering {
        assert_eq!(*n, shards, "sockets on steering port {port}");
    }
}

fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

#[test]
fn the_work_sample_answers_on_every_port_through_one_listener() {
    in_netns("work-sample", |ctx| async move {
        let shared = include_str!("../../config/tests/data/work-sample.json");
        let mut json: serde_json::Value = serde_json::from_str(shared).expect("work sample");
        let mut instances = Vec::new();
        let mut ports = Vec::new();
        let apps = json["Apps"].as_array_mut().expect("Apps");
        for app in apps.iter_mut() {
            let name = app["Name"].as_str().expect("Name").to_string();
            let inst = FakeInstance::echo(&name).await;
            app["Targets"] = serde_json::json!([inst.addr.to_string()]);
            for p in app["Ports"].as_array().expect("Ports") {
                ports.push((p.as_u64().expect("port") as u16, name.clone()));
            }
            instances.push(inst);
        }
        assert_eq!(ports.len(), 12);
        let path = ctx.dir.path().join("config.json");
        std::fs::write(&path, json.to_string()).expect("write");
        let _node = run(&ctx, &path, "node.log");
        for (port, app) in &ports {
            let got = eventually(&format!("port {port} answers"), WAIT, || async {
                tag_of(*port).await
            })
            .await;
            assert_eq!(&got, app, "port {port}");
        }
        let instance_ports: Vec<u16> = instances.iter().map(|i| i.addr.port()).collect();
        let app_ports: Vec<u16> = ports.iter().map(|(p, _)| *p).collect();
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_one_listener_per_shard(&app_ports, &instance_ports, shards);
        assert_eq!(metric("anyedge_steered_ports").await, Some(12));
        // A port no app has is refused, as without steering.
        assert!(refused(5002).await);
    });
}

#[test]
fn two_thousand_ports_of_one_app_all_reach_it() {
    in_netns("2000", |ctx| async move {
        let inst = FakeInstance::echo("many").await;
        let ports: Vec<u16> = (20_000..22_000).collect();
        let list: Vec<String> = ports
            .iter()
            .map(|p| format!("{{ port = {p}, handlers = [] }}"))
            .collect();
        let text = format!(
            "[node]\nthreads = 2\n[[apps]]\nname = \"many\"\n  [[apps.services]]\n  ports = [ {} ]\n  [[apps.instances]]\n  id = \"many-1\"\n  address = \"{}\"\n",
            list.join(", "),
            inst.addr
        );
        let path = ctx.dir.path().join("anyedge.toml");
        write_config(&path, &text);
        let _node = run(&ctx, &path, "node.log");
        eventually("the node serves", WAIT, || async { tag_of(20_000).await }).await;
        // A sample of 200, spread over the range.
        for port in ports.iter().step_by(10) {
            assert_eq!(tag_of(*port).await.as_deref(), Some("many"), "port {port}");
        }
        assert_one_listener_per_shard(&ports, &[inst.addr.port()], 2);
        assert_eq!(metric("anyedge_steered_ports").await, Some(2000));
        assert!(inst.accepted() >= 200);
    });
}

fn app(ports: &[u16], target: SocketAddr) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ port = {p}, handlers = [] }}"))
        .collect();
    format!(
        "[node]\nthreads = 2\ndrain_timeout = \"10s\"\n[[apps]]\nname = \"a\"\n  [[apps.services]]\n  ports = [ {} ]\n  [[apps.instances]]\n  id = \"a-1\"\n  address = \"{target}\"\n",
        list.join(", ")
    )
}

#[test]
fn a_reload_adds_and_removes_ports_under_load() {
    in_netns("reload", |ctx| async move {
        let inst = FakeInstance::echo("a").await;
        let (keep, gone) = (30_000, 30_001);
        let added: Vec<u16> = (31_000..31_050).collect();
        let path = ctx.dir.path().join("anyedge.toml");
        write_config(&path, &app(&[keep, gone], inst.addr));
        let node = run(&ctx, &path, "node.log");
        eventually("the node serves", WAIT, || async { tag_of(keep).await }).await;
        assert_eq!(tag_of(gone).await.as_deref(), Some("a"));

        // Load on the kept port, and a connection open across the reload.
        let mut open = connect(local(keep)).await.expect("connect");
        assert_eq!(read_line(&mut open).await.expect("tag"), "a");
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match tag_of(keep).await {
                        Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        };

        let mut ports = vec![keep];
        ports.extend(&added);
        let t0 = Instant::now();
        write_config(&path, &app(&ports, inst.addr));
        node.signal(libc::SIGHUP);
        for port in &added {
            eventually(&format!("added port {port} answers"), WAIT, || async {
                tag_of(*port).await
            })
            .await;
        }
        let all_added = t0.elapsed();
        eventually("the removed port is refused", WAIT, || async {
            refused(gone).await.then_some(())
        })
        .await;
        let removed = t0.elapsed();
        eprintln!("50 ports added answer {all_added:?} after the write; the removed one refused after {removed:?}");
        assert!(
            all_added < Duration::from_secs(1),
            "added ports answered after {all_added:?}"
        );
        assert!(
            removed < Duration::from_secs(1),
            "removed port refused after {removed:?}"
        );

        stop.store(true, Ordering::Relaxed);
        load.await.expect("load task");
        assert_eq!(
            echo(&mut open, b"still here\n")
                .await
                .expect("open connection"),
            b"still here\n"
        );
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        assert!(ok > 0);
        assert_eq!(
            failed,
            0,
            "{failed} of {} connections on the kept port failed",
            ok + failed
        );
        assert_eq!(metric("anyedge_steered_ports").await, Some(51));
        assert_eq!(
            metric("anyedge_steering_map_updates_total").await,
            Some(2 + 51)
        );
    });
}

#[test]
fn a_restarted_node_takes_the_pinned_maps_over() {
    in_netns("restart", |ctx| async move {
        let inst = FakeInstance::echo("a").await;
        let (p1, p2) = (30_100, 30_101);
        let path = ctx.dir.path().join("anyedge.toml");
        write_config(&path, &app(&[p1, p2], inst.addr));
        let mut first = run(&ctx, &path, "first.log");
        eventually("the first node serves", WAIT, || async { tag_of(p1).await }).await;

        // A crash: the link stays pinned and attached, but nothing steers to the dead
        // process's sockets (they left the sockmap as they closed): refused, not hung.
        first.signal(libc::SIGKILL);
        let _ = first.child.wait();
        let killed = Instant::now();
        assert!(ctx.pins.read_dir().is_ok_and(|mut d| d.next().is_some()));
        assert!(refused(p1).await, "a port of the dead node is refused");

        let second = run(&ctx, &path, "second.log");
        eventually("the second node serves", WAIT, || async {
            tag_of(p2).await
        })
        .await;
        eprintln!(
            "refused for {:?} between the kill and the new node serving",
            killed.elapsed()
        );
        let log = std::fs::read_to_string(ctx.dir.path().join("second.log")).expect("log");
        assert!(log.contains("took the pinned maps over"), "{log}");
        assert_eq!(metric("anyedge_steering_map_updates_total").await, Some(0));

        // A clean stop detaches: the link's pin goes, the maps stay for the next start.
        second.signal(libc::SIGTERM);
        let mut second = second;
        let status = second.child.wait().expect("wait");
        assert!(status.success());
        let node_dir = std::fs::read_dir(&ctx.pins)
            .expect("pins")
            .next()
            .expect("node dir")
            .expect("entry")
            .path();
        assert!(!node_dir.join("link").exists());
        assert!(node_dir.join("ports").exists());
        assert!(refused(p1).await);
    });
}

/// Routing by the dialled address is what it is with sockets: HTTP by Host on a shared port,
/// TLS by SNI, one raw TCP port bound to two addresses for two apps (and refused on a third),
/// PROXY protocol naming the address the client dialled. An in-process node this time.
#[test]
fn http_tls_and_tcp_route_by_the_dialled_address() {
    use anyedge_test_support::http_client::Client;
    use anyedge_test_support::http_instance::HttpInstance;
    use anyedge_test_support::instances::Behaviour;
    use anyedge_test_support::pki::Pki;
    in_netns("routes", |ctx| async move {
        let pki = Pki::new();
        let (_, _, _der) = pki.issue("alpha", &["alpha.test"]);
        let (alpha, beta) = (
            HttpInstance::start("alpha", false).await,
            HttpInstance::start("beta", false).await,
        );
        let (t2, t3) = (
            FakeInstance::echo("t2").await,
            FakeInstance::echo("t3").await,
        );
        let pp = FakeInstance::start(Behaviour::ProxyHeaderEcho).await;
        let toml = format!(
            "[node]\nid = \"routes\"\nthreads = 2\nsteering = \"sk_lookup\"\nbpf_pin_dir = \"{pins}\"\n\
             [[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n  [[apps.services]]\n  ports = [ {{ port = 80, handlers = [\"http\"] }}, {{ port = 443, handlers = [\"tls\", \"http\"] }} ]\n  [[apps.certificates]]\n  cert = \"alpha.pem\"\n  key = \"alpha-key.pem\"\n  [[apps.instances]]\n  id = \"alpha-1\"\n  address = \"{a}\"\n\
             [[apps]]\nname = \"beta\"\nhostnames = [\"beta.test\"]\n  [[apps.services]]\n  ports = [ {{ port = 80, handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"beta-1\"\n  address = \"{b}\"\n\
             [[apps]]\nname = \"t2\"\n  [[apps.services]]\n  ports = [ {{ port = 9000, bind = \"127.0.0.2\", handlers = [] }} ]\n  [[apps.instances]]\n  id = \"t2-1\"\n  address = \"{t2}\"\n\
             [[apps]]\nname = \"t3\"\n  [[apps.services]]\n  ports = [ {{ port = 9000, bind = \"127.0.0.3\", handlers = [] }} ]\n  [[apps.instances]]\n  id = \"t3-1\"\n  address = \"{t3}\"\n\
             [[apps]]\nname = \"pp\"\n  [[apps.services]]\n  ports = [ {{ port = 9100, handlers = [\"proxy_proto\"] }} ]\n  [[apps.instances]]\n  id = \"pp-1\"\n  address = \"{pp}\"\n",
            pins = ctx.pins.display(),
            a = alpha.addr,
            b = beta.addr,
            t2 = t2.addr,
            t3 = t3.addr,
            pp = pp.addr,
        );
        let config = anyedge_config::parse_with_base(&toml, "routes.toml", Some(pki.path()))
            .unwrap_or_else(|d| panic!("{d}"));
        let node = anyedge::node::Node::start(config, Some(local(0)))
            .await
            .expect("node starts");

        // HTTP by Host on one shared port, on any address.
        let addr80 = SocketAddr::from(([127, 0, 0, 9], 80));
        let mut c = Client::h1(addr80).await;
        assert_eq!(c.get("alpha.test", "/").await.2, "alpha\n");
        assert_eq!(c.get("beta.test", "/").await.2, "beta\n");
        let (_, _, headers) = c.get("alpha.test", "/headers").await;
        assert!(headers.contains("x-forwarded-port: 80"), "{headers}");
        // TLS by SNI.
        let tls = pki
            .connect(local(443), "alpha.test", &[b"http/1.1"])
            .await
            .expect("TLS handshake on a steered port");
        let mut c = Client::over(tls, false).await;
        let (status, _, body) = c.get("alpha.test", "/").await;
        assert_eq!((status, body.as_str()), (200, "alpha\n"));
        // One raw port, two apps by bind address; another address of that port is refused.
        let at = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
        let tag = |to: SocketAddr| async move {
            let mut s = connect(to).await.expect("connect");
            read_line(&mut s).await.expect("tag")
        };
        assert_eq!(tag(at([127, 0, 0, 2], 9000)).await, "t2");
        assert_eq!(tag(at([127, 0, 0, 3], 9000)).await, "t3");
        assert!(
            matches!(connect(at([127, 0, 0, 1], 9000)).await, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
        );
        // PROXY protocol names the address and port the client dialled.
        let mut s = connect(at([127, 0, 0, 7], 9100)).await.expect("connect");
        let header = read_line(&mut s).await.expect("header");
        assert!(
            header.contains("127.0.0.7") && header.contains("9100"),
            "{header}"
        );
        assert!(node
            .listening()
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() != 80));
        node.shutdown(Duration::from_secs(1)).await;
    });
}

/// `anyedge run --upgrade` with sk_lookup: the new process takes the steering listeners over
/// (`SCM_RIGHTS`) and swaps its program into the pinned link; the old one drains without
/// detaching, so the ports keep answering after it has exited, and no connection fails. (It
/// lost 1 to 5 connections in 30 of 50 runs here while the new process accepted from the
/// shared sockets before its routes were in force; see the test below.)
#[test]
fn an_upgrade_keeps_the_ports_steered() {
    in_netns("upgrade", |ctx| async move {
        let inst = FakeInstance::echo("a").await;
        let (p1, p2) = (30_200, 30_201);
        let control = ctx.dir.path().join("control.sock");
        let path = ctx.dir.path().join("anyedge.toml");
        let text = app(&[p1, p2], inst.addr).replacen(
            "[node]\n",
            &format!("[node]\ncontrol_socket = \"{}\"\n", control.display()),
            1,
        );
        write_config(&path, &text);
        let mut old = run(&ctx, &path, "old.log");
        eventually("the old node serves", WAIT, || async { tag_of(p1).await }).await;
        let steering_listeners = || {
            let mut l = listeners();
            l.remove(&ADMIN);
            l.remove(&inst.addr.port());
            l
        };
        let before = steering_listeners();

        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let slow = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (ok, failed, slow, stop) = (ok.clone(), failed.clone(), slow.clone(), stop.clone());
            tokio::spawn(async move {
                // Refused or reset is a failure of the hand-over; an answer slower than the
                // read timeout is the machine being busy (counted, printed).
                while !stop.load(Ordering::Relaxed) {
                    let counter = match connect(local(p1)).await {
                        Err(e) => {
                            eprintln!("connect failed: {e}");
                            &failed
                        }
                        Ok(mut s) => {
                            let tag = tokio::time::timeout(WAIT, read_line(&mut s)).await;
                            match tag {
                                Ok(Ok(_)) => &ok,
                                Ok(Err(e)) => {
                                    eprintln!("no answer: {e}");
                                    &failed
                                }
                                Err(_) => &slow,
                            }
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let _new = run_with(&ctx, &path, "new.log", &["--upgrade"]);
        let deadline = Instant::now() + WAIT;
        while old.try_exit_code().is_none() {
            assert!(
                Instant::now() < deadline,
                "the old node did not exit after the hand-over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        load.await.expect("load");
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        let slow = slow.load(Ordering::Relaxed);
        eprintln!("upgrade under load: {ok} connections answered, {failed} failed, {slow} slow");
        assert!(ok > 0);
        // The new process steers to the very sockets it was handed (their accept queues
        // with them): nothing was refused or reset.
        assert_eq!(steering_listeners(), before);
        assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
        for port in [p1, p2] {
            assert_eq!(
                tag_of(port).await.as_deref(),
                Some("a"),
                "port {port} after the upgrade"
            );
        }
        let old_log = std::fs::read_to_string(ctx.dir.path().join("old.log")).expect("log");
        assert!(!old_log.contains("sk_lookup: detached"), "{old_log}");
    });
}

/// A process that steers to its listeners (its own on a restart, the previous process's on an
/// upgrade) accepts from them only once its routes are in force: a connection that reaches it
/// earlier waits in the accept queue and is then served, never accepted and closed for want of
/// a route (the cause of the connections an upgrade lost, 2 of 115 in CI). An in-process node
/// `a` serves; a second edge with the same node id takes the steering over (its listener
/// replaces `a`'s in the sockmap) and is given its snapshot only after a client has connected.
#[test]
fn a_node_taking_the_steering_over_accepts_only_once_routed() {
    use anyedge_catalog::{LiveRegistry, Snapshot};
    in_netns("routed", |ctx| async move {
        let inst = FakeInstance::echo("a").await;
        let port = 30_300;
        let toml = format!(
            "[node]\nid = \"routed\"\nsteering = \"sk_lookup\"\nbpf_pin_dir = \"{pins}\"\n[[apps]]\nname = \"a\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, handlers = [] }} ]\n  [[apps.instances]]\n  id = \"a-1\"\n  address = \"{inst}\"\n",
            pins = ctx.pins.display(),
            inst = inst.addr,
        );
        let config = anyedge_config::parse_with_base(&toml, "routed.toml", None)
            .unwrap_or_else(|d| panic!("{d}"));
        let a = anyedge::node::Node::start(config.clone(), Some(local(0)))
            .await
            .expect("node a starts");
        assert_eq!(tag_of(port).await.as_deref(), Some("a"));

        let b = anyedge_edge::Edge::new(
            anyedge_telemetry::Metrics::new(),
            anyedge_core::Drain::new(),
            &config.limits,
            Vec::new(),
        )
        .expect("edge b");
        b.start_steering(&config.node)
            .expect("b takes the steering over");
        // Steered to b's listener now, before b has any route.
        let mut early = connect(local(port)).await.expect("connect");
        let before = tokio::time::timeout(Duration::from_millis(500), read_line(&mut early)).await;
        assert!(
            before.is_err(),
            "b answered before its routes were in force: {before:?}"
        );
        let snapshot = Snapshot::build(Arc::new(config), &LiveRegistry::new(), None);
        assert!(b.apply(Arc::new(snapshot)).is_empty());
        let tag = tokio::time::timeout(WAIT, read_line(&mut early)).await;
        assert_eq!(
            tag.expect("served once routed").expect("tag"),
            "a",
            "the early connection is served by b"
        );
        assert_eq!(tag_of(port).await.as_deref(), Some("a"));
        b.stop_accepting();
        a.shutdown(Duration::from_secs(1)).await;
    });
}
