//! The dashboard's live stream under 1,000 updates per second: a page that reads keeps
//! getting pictures, a page that stops reading is dropped (never waited for), and the node's
//! memory stays flat. Against a real `anyedge run` process, its memory read from /proc.

use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn open_stream(admin: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(admin).await.expect("connect admin");
    s.write_all(b"GET /v1/status/stream HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .expect("ask for the stream");
    s
}

async fn metric(admin: SocketAddr, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_updates_a_second_keep_memory_flat_and_drop_a_stalled_page() {
    let dir = tempfile::tempdir().expect("dir");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Two apps: each picture is about 1.7 KiB.
    let mut toml = String::from("[admin]\nupdate_interval = \"1ms\"\n");
    let port = free_port();
    for i in 0..2 {
        toml += &format!(
            "[[apps]]\nname = \"app{i}\"\nhostnames = [\"app{i}.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"app{i}-1\"\n  address = \"127.0.0.1:9\"\n"
        );
    }
    let config = dir.path().join("node.toml");
    std::fs::write(&config, toml).expect("config");
    let log = dir.path().join("node.log");
    // ANYEDGE_BIN: another build of the binary (a release build, to measure the rate).
    let bin = std::env::var_os("ANYEDGE_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_anyedge").into(), PathBuf::from);
    let node = Proc::anyedge_run(&bin, &config, admin, &log, None);
    eventually("the admin listener", Duration::from_secs(20), || async {
        TcpStream::connect(admin).await.ok()
    })
    .await;

    // A page that reads everything, counting pictures.
    let mut reader = open_stream(admin).await;
    let counter = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let (mut events, mut bytes, mut tail) = (0u64, 0u64, Vec::<u8>::new());
        let start = Instant::now();
        let mut marks = Vec::new();
        while start.elapsed() < Duration::from_secs(13) {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            bytes += n as u64;
            tail.extend_from_slice(&buf[..n]);
            events += count_events(&mut tail);
            marks.push((start.elapsed(), events));
        }
        (events, bytes, marks)
    });
    // A page that never reads: its socket fills, its queue fills, it must be dropped.
    let stalled = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_recv_buffer_size(4096).expect("small receive buffer");
        s.connect(&admin.into()).expect("connect");
        s.set_nonblocking(true).expect("nonblocking");
        let mut s = TcpStream::from_std(s.into()).expect("tokio stream");
        s.write_all(b"GET /v1/status/stream HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .expect("ask");
        s
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = rss_kib(node.pid());
    let (updates_before, t_before) = (
        metric(admin, "anyedge_admin_stream_updates_total")
            .await
            .expect("updates"),
        Instant::now(),
    );
    let dropped = eventually(
        "the stalled page dropped",
        Duration::from_secs(10),
        || async {
            metric(admin, "anyedge_admin_streams_dropped_total")
                .await
                .filter(|n| *n >= 1)
        },
    )
    .await;
    // Many page loads and leaves meanwhile: each stream is freed with its connection.
    for _ in 0..50 {
        let s = open_stream(admin).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(s);
    }
    let (events, bytes, marks) = counter.await.expect("reader");
    let after = rss_kib(node.pid());
    let updates = metric(admin, "anyedge_admin_stream_updates_total")
        .await
        .expect("updates");
    let node_rate = (updates - updates_before) as f64 / t_before.elapsed().as_secs_f64();
    // Updates per second the reading page got over its last 10 s.
    let at = |t: Duration| marks.iter().rev().find(|(e, _)| *e <= t).map_or(0, |m| m.1);
    let rate = (at(Duration::from_secs(13)) - at(Duration::from_secs(3))) as f64 / 10.0;
    eprintln!(
        "stream: the node sent {node_rate:.0} updates/s; {events} pictures ({bytes} bytes) to the reading page, {rate:.0}/s over the last 10 s; stalled pages dropped: {dropped}; node RSS {before} KiB -> {after} KiB"
    );
    // The node keeps its 1 ms cadence (less what a shared debug-build machine steals), and a
    // page that reads gets a steady share of it (fewer when it reads slower: pictures are
    // whole, the latest replaces an unsent one).
    assert!(
        node_rate >= 700.0,
        "the node's update rate: {node_rate:.0}/s"
    );
    assert!(
        rate >= 200.0,
        "the reading page kept up: {rate:.0} pictures/s"
    );
    assert!(
        after <= before + 8 * 1024,
        "node memory grew from {before} KiB to {after} KiB"
    );
    let open = metric(admin, "anyedge_admin_streams").await.expect("gauge");
    assert!(open <= 1, "streams left open: {open}");
    drop(stalled);
    drop(node);
}

/// Complete SSE events in `tail` (removed from it).
fn count_events(tail: &mut Vec<u8>) -> u64 {
    let mut n = 0;
    while let Some(end) = tail.windows(2).position(|w| w == b"\n\n") {
        if tail[..end].windows(13).any(|w| w == b"event: status") {
            n += 1;
        }
        tail.drain(..end + 2);
    }
    n
}
