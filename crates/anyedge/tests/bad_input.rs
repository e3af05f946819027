//! Bad input must not hurt the node: garbage, clients that vanish, instances that die
//! mid-stream, a thousand connections at once, a client past its per-IP cap. Afterwards every
//! count returns to zero and no descriptor is left behind. One test in its own binary, so the
//! process's descriptor count belongs to it alone.

use anyedge::node::Node;
use anyedge_test_support::client::{closed_by_peer, connect, connect_from, echo};
use anyedge_test_support::instances::{Behaviour, FakeInstance};
use anyedge_test_support::{eventually, fd_count, free_port};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PER_IP: u32 = 25;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Descriptors of this process, less the ones the splice pipe pool keeps for reuse.
fn fds(node: &Node) -> usize {
    fd_count(std::process::id()) - 2 * node.idle_pipes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_leaks_nothing_and_panics_nothing() {
    let echo_inst = FakeInstance::echo("").await;
    let dying = FakeInstance::start(Behaviour::CloseMidStream { bytes: 1000 }).await;
    let (p_echo, p_dying) = (free_port(), free_port());
    let toml = format!(
        "[limits]\nmax_connections = 5000\nmax_connections_per_ip = {PER_IP}\n\n\
         [[apps]]\nname = \"echo\"\nlimits = {{ max_connections = 4000 }}\nconcurrency = {{ soft_limit = 2000, hard_limit = 2000 }}\n  [[apps.services]]\n  ports = [ {{ port = {p_echo}, handlers = [] }} ]\n  [[apps.instances]]\n  id = \"e\"\n  address = \"{}\"\n\
         [[apps]]\nname = \"dying\"\n  [[apps.services]]\n  ports = [ {{ port = {p_dying}, handlers = [] }} ]\n  [[apps.instances]]\n  id = \"d\"\n  address = \"{}\"\n",
        echo_inst.addr, dying.addr
    );
    let config = anyedge_config::parse(&toml, "bad-input.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(local(0)))
        .await
        .expect("node starts");

    // Warm up once so lazily created runtime resources exist before the baseline.
    let mut warm = connect(local(p_echo)).await.expect("connect");
    assert_eq!(echo(&mut warm, b"warm").await.expect("echo"), b"warm");
    drop(warm);
    eventually(
        "warm-up connection closed",
        Duration::from_secs(5),
        || async { (node.open_connections() == 0).then_some(()) },
    )
    .await;
    let baseline = fds(&node);

    // Garbage: random bytes, including a fake PROXY header and NULs, pass through untouched.
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut s = connect(local(p_echo)).await.expect("connect");
    assert_eq!(
        echo(&mut s, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\0\0\xff")
            .await
            .expect("echo"),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\0\0\xff"
    );
    assert_eq!(echo(&mut s, &garbage).await.expect("echo garbage"), garbage);
    drop(s);

    // Clients that close at once, or reset, before or after sending.
    // Spread over 40 client addresses: the node frees a slot only when its side has closed,
    // so 200 back-to-back clients from one address could meet the per-IP cap, which is
    // tested on its own below.
    for i in 0..200u32 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 3, (i % 40) as u8 + 1));
        let mut s = connect_from(source, local(p_echo)).await.expect("connect");
        if i % 2 == 0 {
            let _ = s.write_all(b"bye").await;
        }
        if i % 3 == 0 {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        drop(s);
    }

    // An instance that sends 1000 bytes and resets.
    for _ in 0..20 {
        let mut s = connect(local(p_dying)).await.expect("connect");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(got.len() <= 1000);
    }

    // A thousand concurrent connections, from 40 client addresses (under the per-IP cap).
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i % 40) as u8 + 1));
        tasks.push(tokio::spawn(async move {
            let mut s = connect_from(source, local(p_echo)).await?;
            let msg = format!("conn {i}\n");
            let back = echo(&mut s, msg.as_bytes()).await?;
            Ok::<_, std::io::Error>((back == msg.as_bytes(), s))
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        let (ok, s) = t.await.expect("task").expect("concurrent echo");
        assert!(ok);
        held.push(s);
    }
    assert_eq!(node.open_connections(), 1000);
    drop(held);

    // One client address past its cap: the extra connection is closed, the others still work,
    // and another address is unaffected.
    let capped = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));
    let mut held = Vec::new();
    for _ in 0..PER_IP {
        let mut s = connect_from(capped, local(p_echo)).await.expect("connect");
        assert_eq!(echo(&mut s, b"ok").await.expect("echo under cap"), b"ok");
        held.push(s);
    }
    let mut over = connect_from(capped, local(p_echo))
        .await
        .expect("TCP connect succeeds");
    assert!(
        closed_by_peer(&mut over).await,
        "the connection past the cap is closed"
    );
    let mut other = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 2, 2)), local(p_echo))
        .await
        .expect("connect");
    assert_eq!(
        echo(&mut other, b"fine")
            .await
            .expect("another client is unaffected"),
        b"fine"
    );
    assert_eq!(
        echo(&mut held[0], b"still")
            .await
            .expect("held connection works"),
        b"still"
    );
    drop((held, over, other));

    // Everything returns to zero: connection slots, active gauges, descriptors.
    eventually(
        "all connections closed",
        Duration::from_secs(10),
        || async { (node.open_connections() == 0).then_some(()) },
    )
    .await;
    let m = node.metrics().render();
    assert!(
        m.contains("anyedge_edge_tcp_active_connections{app=\"echo\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("anyedge_edge_tcp_active_connections{app=\"dying\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("anyedge_errors_total{app=\"echo\",code=\"client_ip_connection_limit\"} 1"),
        "{m}"
    );
    eventually(
        "descriptors back to the baseline",
        Duration::from_secs(10),
        || async {
            let now = fds(&node);
            (now <= baseline).then_some(())
        },
    )
    .await;
}
