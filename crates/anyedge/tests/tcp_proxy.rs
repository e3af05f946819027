//! System tests of the raw TCP path, with an in-process node, real sockets on loopback and fake
//! instances: the work sample's 12 ports, failover, balance, PROXY headers.

use anyedge::node::Node;
use anyedge_test_support::client::{connect, echo, read_line};
use anyedge_test_support::free_port;
use anyedge_test_support::instances::{Behaviour, FakeInstance};
use std::collections::HashMap;
use std::net::SocketAddr;

fn admin() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The work-sample JSON as shipped, with every port remapped to a free one and every
/// `tcp-echo.fly.dev` target replaced by a local echo instance tagged `app target`.
/// `bad.target.for.testing` stays as it is.
async fn remapped_work_sample() -> (String, HashMap<u16, String>, Vec<FakeInstance>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/work-sample.json"
    );
    let text = std::fs::read_to_string(path).expect("work sample");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut ports = HashMap::new();
    let mut instances = Vec::new();
    for app in json["Apps"].as_array_mut().expect("Apps") {
        let name = app["Name"].as_str().expect("Name").to_string();
        for port in app["Ports"].as_array_mut().expect("Ports") {
            let p = free_port();
            ports.insert(p, name.clone());
            *port = p.into();
        }
        for target in app["Targets"].as_array_mut().expect("Targets") {
            let t = target.as_str().expect("target").to_string();
            if t.starts_with("tcp-echo.fly.dev:") {
                let inst = FakeInstance::echo(&format!("{name} {t}")).await;
                *target = inst.addr.to_string().into();
                instances.push(inst);
            }
        }
    }
    (json.to_string(), ports, instances)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_twelve_work_sample_ports_echo_through_their_app() {
    let (json, ports, _instances) = remapped_work_sample().await;
    let config = anyedge_config::parse(&json, "work-sample.json").expect("valid work sample");
    let node = Node::start(config, admin()).await.expect("node starts");
    assert_eq!(ports.len(), 12);
    for (port, app) in &ports {
        // Several connections per port, so the unresolvable target of six-thousand is chosen
        // at least once and never shows.
        for i in 0..6 {
            let mut s = connect(local(*port)).await.expect("connect");
            let tag = read_line(&mut s).await.expect("instance greets");
            assert!(
                tag.starts_with(&format!("{app} ")),
                "port {port}: {tag} is not from {app}"
            );
            let payload = format!("hello {port} #{i}\n");
            assert_eq!(
                echo(&mut s, payload.as_bytes()).await.expect("echo"),
                payload.as_bytes()
            );
        }
    }
    let metrics = node.metrics().render();
    assert!(
        metrics.contains("anyedge_edge_tcp_connects_total{app=\"six-thousand\"} 24"),
        "{metrics}"
    );
    assert!(metrics
        .contains("anyedge_errors_total{app=\"six-thousand\",code=\"no_instance_available\"} 0"));
}

async fn node_with(toml: &str) -> Node {
    let config = anyedge_config::parse(toml, "test.toml").unwrap_or_else(|d| panic!("{d}"));
    Node::start(config, admin()).await.expect("node starts")
}

fn app_toml(name: &str, port: u16, handlers: &str, targets: &[String]) -> String {
    let mut t = format!(
        "[[apps]]\nname = \"{name}\"\nconcurrency = {{ soft_limit = 1000, hard_limit = 1000 }}\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [{handlers}] }} ]\n"
    );
    for (i, target) in targets.iter().enumerate() {
        t += &format!("  [[apps.instances]]\n  id = \"i{i}\"\n  address = \"{target}\"\n");
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_unresolvable_targets_never_fail_a_client() {
    let good = FakeInstance::echo("good").await;
    let refused = free_port();
    let port = free_port();
    let targets = vec![
        format!("127.0.0.1:{refused}"),
        "bad.target.for.testing:6003".to_string(),
        good.addr.to_string(),
    ];
    let node = node_with(&app_toml("failover", port, "", &targets)).await;
    for i in 0..60 {
        let mut s = connect(local(port)).await.expect("connect");
        assert_eq!(
            read_line(&mut s).await.expect("reached the good target"),
            "good",
            "connection {i}"
        );
        assert_eq!(echo(&mut s, b"x").await.expect("echo"), b"x");
    }
    assert_eq!(good.accepted(), 60);
    let m = node.metrics().render();
    assert!(
        m.contains("anyedge_errors_total{app=\"failover\",code=\"no_instance_available\"} 0"),
        "{m}"
    );
    assert!(
        !m.contains("reason=\"refused\"} 0"),
        "a refused attempt was counted: {m}"
    );
    assert!(
        !m.contains("reason=\"resolve\"} 0"),
        "a failed lookup was counted: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_target_closes_the_client_promptly() {
    let port = free_port();
    let targets = vec![
        format!("127.0.0.1:{}", free_port()),
        "bad.target.for.testing:1".to_string(),
    ];
    let node = node_with(&app_toml("down", port, "", &targets)).await;
    let started = std::time::Instant::now();
    let mut s = connect(local(port)).await.expect("connect");
    assert!(anyedge_test_support::client::closed_by_peer(&mut s).await);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let m = node.metrics().render();
    assert!(
        m.contains("anyedge_errors_total{app=\"down\",code=\"no_instance_available\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_targets_share_200_connections_evenly() {
    let a = FakeInstance::echo("a").await;
    let b = FakeInstance::echo("b").await;
    let port = free_port();
    let _node = node_with(&app_toml(
        "balanced",
        port,
        "",
        &[a.addr.to_string(), b.addr.to_string()],
    ))
    .await;
    // Held open together: least-in-flight keeps the two within a few of each other.
    let mut held = Vec::new();
    let mut count = HashMap::new();
    for _ in 0..200 {
        let mut s = connect(local(port)).await.expect("connect");
        let tag = read_line(&mut s).await.expect("tag");
        *count.entry(tag).or_insert(0) += 1;
        held.push(s);
    }
    let (na, nb) = (
        count.get("a").copied().unwrap_or(0),
        count.get("b").copied().unwrap_or(0),
    );
    assert_eq!(na + nb, 200);
    assert!((90..=110).contains(&na), "held connections: a={na} b={nb}");
    drop(held);
    // One at a time (nothing in flight): random ties still spread within reason.
    let mut count = HashMap::new();
    for _ in 0..200 {
        let mut s = connect(local(port)).await.expect("connect");
        *count
            .entry(read_line(&mut s).await.expect("tag"))
            .or_insert(0) += 1;
    }
    let na = count.get("a").copied().unwrap_or(0);
    assert!(
        (60..=140).contains(&na),
        "sequential connections: a={na} of 200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_tell_the_instance_the_client_address() {
    let inst = FakeInstance::start(Behaviour::ProxyHeaderEcho).await;
    let (p1, p2, pdefault) = (free_port(), free_port(), free_port());
    let target = vec![inst.addr.to_string()];
    let mut toml = app_toml("pp1", p1, "\"proxy_proto\"", &target);
    toml = toml.replace(
        "handlers = [\"proxy_proto\"] }",
        "handlers = [\"proxy_proto\"], proxy_proto = \"v1\" }",
    );
    toml += &app_toml("pp2", p2, "\"proxy_proto\"", &target).replace(
        "handlers = [\"proxy_proto\"] }",
        "handlers = [\"proxy_proto\"], proxy_proto = \"v2\" }",
    );
    toml += &app_toml("ppdefault", pdefault, "\"proxy_proto\"", &target);
    let _node = node_with(&toml).await;

    for (port, want) in [(p1, "v1"), (p2, "v2"), (pdefault, "v1")] {
        let mut s = connect(local(port)).await.expect("connect");
        let me = s.local_addr().expect("client addr");
        let line = read_line(&mut s).await.expect("header report");
        let expected = match want {
            "v1" => format!("v1 PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}", me.port()),
            _ => format!("v2 127.0.0.1:{} 127.0.0.1:{port}", me.port()),
        };
        assert_eq!(line, expected);
        assert_eq!(
            echo(&mut s, b"after the header\n").await.expect("echo"),
            b"after the header\n"
        );
    }
}

/// A listener with a full accept queue: the kernel drops further SYNs, so connecting to it
/// times out. Returns the listener and the connections that fill its queue.
fn blackhole() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&local(0).into()).expect("bind");
    socket.listen(0).expect("listen");
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().expect("addr");
    let fill = (0..3)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).ok()
        })
        .collect();
    (listener, fill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_times_out_is_bounded_and_skipped() {
    let (hole, _fill) = blackhole();
    let good = FakeInstance::echo("good").await;
    let port = free_port();
    let toml = format!(
        "[limits]\nconnect_timeout = \"300ms\"\n\n{}",
        app_toml(
            "slowpoke",
            port,
            "",
            &[
                hole.local_addr().expect("addr").to_string(),
                good.addr.to_string()
            ]
        )
    );
    let node = node_with(&toml).await;
    for i in 0..20 {
        let started = std::time::Instant::now();
        let mut s = connect(local(port)).await.expect("connect");
        assert_eq!(
            read_line(&mut s).await.expect("reached the good target"),
            "good",
            "connection {i}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "connect timeout bounded: {:?}",
            started.elapsed()
        );
    }
    let m = node.metrics().render();
    assert!(
        !m.contains(
            "anyedge_edge_tcp_connect_failures_total{app=\"slowpoke\",reason=\"timeout\"} 0"
        ),
        "{m}"
    );
    assert!(
        m.contains("anyedge_errors_total{app=\"slowpoke\",code=\"no_instance_available\"} 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_on_every_address_and_on_a_bound_address_routes_by_local_address() {
    let (wide, narrow) = (
        FakeInstance::echo("wide").await,
        FakeInstance::echo("narrow").await,
    );
    let port = free_port();
    let toml = format!(
        "[[apps]]\nname = \"wide\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, handlers = [] }} ]\n  [[apps.instances]]\n  id = \"w\"\n  address = \"{}\"\n\
         [[apps]]\nname = \"narrow\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.2\", handlers = [] }} ]\n  [[apps.instances]]\n  id = \"n\"\n  address = \"{}\"\n",
        wide.addr, narrow.addr
    );
    let node = node_with(&toml).await;
    assert_eq!(
        node.listening().len(),
        1,
        "one wildcard listener serves both"
    );
    for (ip, want) in [
        ([127, 0, 0, 1], "wide"),
        ([127, 0, 0, 2], "narrow"),
        ([127, 0, 0, 3], "wide"),
    ] {
        let mut s = connect(SocketAddr::from((ip, port)))
            .await
            .expect("connect");
        assert_eq!(read_line(&mut s).await.expect("tag"), want);
    }
}

/// 8 MiB through the copy path (many buffers' worth, written while the echo comes back), then a
/// half-close: every byte arrives once and in order, and the instance's close follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_bytes_cross_intact_while_both_directions_flow() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let inst = FakeInstance::echo("").await;
    let port = free_port();
    let _node = node_with(&app_toml("bulk", port, "", &[inst.addr.to_string()])).await;
    let stream = connect(local(port)).await.expect("connect");
    // Bytes that tell their offset apart: a swapped, lost or repeated chunk changes them.
    let sent: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (mut r, mut w) = stream.into_split();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(100_003) {
            w.write_all(chunk).await.expect("write");
        }
        w.shutdown().await.expect("half-close");
        w
    });
    let mut got = Vec::with_capacity(sent.len());
    tokio::time::timeout(std::time::Duration::from_secs(30), r.read_to_end(&mut got))
        .await
        .expect("echoed and closed in time")
        .expect("read");
    let _w = writer.await.expect("writer");
    assert_eq!(got.len(), sent.len(), "byte count");
    assert!(got == sent, "the bytes came back changed");
}

/// The `tr` (timer) field of the IPv4 socket `local` -> `remote` in `/proc/net/tcp`: 2 is the
/// keep-alive timer; `None` when there is no such socket.
fn tcp_timer(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    let hex = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v4) => {
            format!("{:08X}:{:04X}", u32::from_le_bytes(v4.octets()), a.port())
        }
        std::net::IpAddr::V6(_) => String::new(),
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&l.as_str()) && f.get(2) == Some(&r.as_str()))
            .then(|| f.get(5)?.split(':').next()?.parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_proxied_connections_keep_tcp_keepalive_on_both_sides() {
    let inst = FakeInstance::echo("ka").await;
    let port = free_port();
    let toml = format!(
        "[[apps]]\nname = \"ka\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [] }} ]\n  [[apps.instances]]\n  id = \"ka-1\"\n  address = \"{}\"\n",
        inst.addr
    );
    let config = anyedge_config::parse(&toml, "ka.toml").unwrap_or_else(|d| panic!("{d}"));
    let _node = Node::start(config, admin()).await.expect("node");
    let mut client = connect(local(port)).await.expect("connect");
    assert!(read_line(&mut client)
        .await
        .expect("greeting")
        .contains("ka"));
    let client_addr = client.local_addr().expect("addr");
    // The proxy's socket to the client: local = the app's port, remote = the client.
    assert_eq!(
        tcp_timer(local(port), client_addr),
        Some(2),
        "no keep-alive timer on the client's connection"
    );
    // The proxy's socket to the instance: remote = the instance's address (its local port is
    // ephemeral: find it by the remote side, leaving out the instance's own accepted socket).
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let inst_hex = format!("0100007F:{:04X}", inst.addr.port());
    let to_instance: Vec<u8> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(2) == Some(&inst_hex.as_str()) && f.get(3) == Some(&"01"))
                .then(|| f.get(5)?.split(':').next()?.parse().ok())
                .flatten()
        })
        .collect();
    assert_eq!(
        to_instance,
        vec![2],
        "the instance connection: {to_instance:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_raw_tcp_connection_is_closed_after_the_services_idle_timeout() {
    use anyedge_test_support::client::closed_by_peer;
    let inst = FakeInstance::echo("idle").await;
    let port = free_port();
    let toml = format!(
        "[[apps]]\nname = \"idle\"\n  [[apps.services]]\n  tcp_options = {{ idle_timeout = \"400ms\" }}\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [] }} ]\n  [[apps.instances]]\n  id = \"idle-1\"\n  address = \"{}\"\n",
        inst.addr
    );
    let config = anyedge_config::parse(&toml, "idle.toml").unwrap_or_else(|d| panic!("{d}"));
    let _node = Node::start(config, admin()).await.expect("node");
    let (mut quiet, mut busy) = (
        connect(local(port)).await.expect("connect"),
        connect(local(port)).await.expect("connect"),
    );
    for c in [&mut quiet, &mut busy] {
        assert!(read_line(c).await.expect("greeting").contains("idle"));
    }
    // `busy` moves a few bytes every 100 ms for 1.2 s, three timeouts' worth: never idle long
    // enough to be cut.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(1200) {
        assert_eq!(echo(&mut busy, b"ping\n").await.expect("echo"), b"ping\n");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // `quiet` sent nothing since its greeting: the proxy has closed it by now.
    assert!(
        closed_by_peer(&mut quiet).await,
        "the idle connection is still open"
    );
    assert_eq!(echo(&mut busy, b"still\n").await.expect("echo"), b"still\n");
}
