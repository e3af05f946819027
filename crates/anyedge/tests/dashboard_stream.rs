//! The dashboard's live stream under 1,000 updates per second (`update_interval = "1ms"`): the
//! node keeps its cadence (no update skipped: one every millisecond), a
//! page that reads gets the latest picture within a few milliseconds of it being built and
//! sees every update's number advance (the pictures it did not take were replaced by newer
//! ones, never queued), a page that stops reading is dropped (never waited for), and the
//! node's memory stays flat. Against a real `anyedge run` process, its memory read from /proc.

use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// The node's update and skipped counters, and when they were read (the moment the request
/// was sent: the counters are read after it, so the rate computed from two such readings
/// over-counts nothing).
async fn counters(admin: SocketAddr) -> (Instant, u64, u64) {
    let at = Instant::now();
    let updates = metric(admin, "anyedge_admin_stream_updates_total").await;
    let skipped = metric(admin, "anyedge_admin_stream_updates_skipped_total").await;
    (
        at,
        updates.expect("updates counter"),
        skipped.expect("skipped counter"),
    )
}

/// The newest picture of one read, as the reading page got it.
struct Seen {
    at: Instant,
    /// The update it is the picture of (its `id:` line).
    id: u64,
    /// Pictures in the read that brought it (the page draws the newest).
    pictures: usize,
    /// Milliseconds from the node building it (its `time_ms`) to the page having it.
    lag_ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_updates_a_second_keep_memory_flat_and_drop_a_stalled_page() {
    let dir = tempfile::tempdir().expect("dir");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Two apps: each picture is about 2.3 KiB.
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

    // A page that reads everything, noting each picture's update number and how late it came.
    let mut reader = open_stream(admin).await;
    let page = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let (mut bytes, mut tail, mut seen) = (0u64, Vec::<u8>::new(), Vec::new());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(13) {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            bytes += n as u64;
            tail.extend_from_slice(&buf[..n]);
            // What the page draws is the newest picture it has: how late is that one.
            let (at, now_ms) = (Instant::now(), wall_ms());
            let events = complete_events(&mut tail);
            if let Some((id, time_ms)) = events.last() {
                seen.push(Seen {
                    at,
                    id: *id,
                    pictures: events.len(),
                    lag_ms: now_ms.saturating_sub(*time_ms),
                });
            }
        }
        (start, bytes, seen)
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
    let (t0, updates0, skipped0) = counters(admin).await;
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
    let (start, bytes, seen) = page.await.expect("reader");
    let (t1, updates1, skipped1) = counters(admin).await;
    let after = rss_kib(node.pid());
    let node_rate = (updates1 - updates0) as f64 / t1.duration_since(t0).as_secs_f64();

    // The reading page over its last 10 s: pictures taken, how far the update numbers it saw
    // advanced (the updates it was shown, each picture standing for those it replaced), and
    // how late each picture reached it.
    let window: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.at.duration_since(start) >= Duration::from_secs(3))
        .collect();
    let (first, last) = (
        window.first().expect("pictures"),
        window.last().expect("pictures"),
    );
    let span = last.at.duration_since(first.at).as_secs_f64();
    let taken = window.iter().map(|s| s.pictures).sum::<usize>() as f64 / span;
    let shown = (last.id - first.id) as f64 / span;
    let mut lags: Vec<u64> = window.iter().map(|s| s.lag_ms).collect();
    lags.sort_unstable();
    let lag = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
    let longest_gap = window
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default();
    eprintln!(
        "stream: the node sent {node_rate:.1} updates/s, skipped {}; the reading page took {taken:.0} pictures/s ({} in all, {bytes} bytes, in {} reads) showing {shown:.1} updates/s, lag p50 {} ms p99 {} ms max {} ms, longest gap {longest_gap:?}; stalled pages dropped: {dropped}; node RSS {before} KiB -> {after} KiB",
        skipped1 - skipped0,
        seen.iter().map(|s| s.pictures).sum::<usize>(),
        seen.len(),
        lag(0.5),
        lag(0.99),
        lag(1.0),
    );
    // The node keeps its cadence: no interval skipped in the window (the schedule is fixed,
    // one update due every millisecond, and one is skipped only when the node falls more than
    // a second behind it), so 1,000 updates a second. Read over HTTP at the window's ends,
    // the counter may lag the schedule by up to that second of catching up on a starved
    // machine: at least 900 a second over the 10 s window.
    assert_eq!(
        skipped1 - skipped0,
        0,
        "update intervals skipped in the window"
    );
    assert!(
        node_rate >= 1000.0 * 0.9,
        "the node's update rate: {node_rate:.1}/s"
    );
    // A page that reads is shown the updates as they come: the update numbers it sees
    // advance at the node's rate, and the picture it has is a fresh one.
    assert!(
        shown >= 1000.0 * 0.9,
        "the reading page was shown {shown:.1} updates/s"
    );
    assert!(
        lag(0.5) <= 5,
        "the reading page's median lag: {} ms",
        lag(0.5)
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

/// The complete SSE events in `tail` (removed from it): each one's `id:` and `time_ms`.
fn complete_events(tail: &mut Vec<u8>) -> Vec<(u64, u64)> {
    fn number_after(event: &[u8], key: &[u8]) -> Option<u64> {
        let at = event.windows(key.len()).position(|w| w == key)? + key.len();
        let digits = event[at..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        std::str::from_utf8(&event[at..at + digits])
            .ok()?
            .parse()
            .ok()
    }
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(end) = tail[from..].windows(2).position(|w| w == b"\n\n") {
        let event = &tail[from..from + end];
        from += end + 2;
        // (Each event follows its chunk's size line; the stream's first is its `retry:`.)
        if !event.windows(13).any(|w| w == b"event: status") {
            continue;
        }
        let id = number_after(event, b"id: ").expect("every picture has its update number");
        let time_ms = number_after(event, b"\"time_ms\":").expect("every picture has its time");
        out.push((id, time_ms));
    }
    tail.drain(..from);
    out
}
