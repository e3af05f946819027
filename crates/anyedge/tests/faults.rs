//! The fault suite (issue 9, item 6), through the `anyedge` binary as operators run it: each
//! fault under steady load from clients that do not retry (keep-alive clients and
//! connection-per-request clients), every request counted. The rule: no GET is lost while a
//! healthy instance of its app exists, beyond those in flight on an instance at the moment it
//! died, and none from 2 s after the fault on. Each test prints its row of the fault table
//! (`cargo test --test faults -- --nocapture`).

mod handover;

use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::process::Proc;
use anyedge_test_support::runtimes::Runtimes;
use anyedge_test_support::{eventually, free_port};
use handover::{keep_alive_client, per_request_client, read_answer, Tally};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One HTTP app on `port` with these instances; `extra` goes into `[node]`.
fn config(port: u16, instances: &[SocketAddr], extra: &str) -> String {
    let mut text = format!(
        "[node]\ndrain_timeout = \"20s\"\n{extra}\n[[apps]]\nname = \"app\"\nhostnames = [\"alpha.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    for (i, addr) in instances.iter().enumerate() {
        text.push_str(&format!(
            "  [[apps.instances]]\n  id = \"i{i}\"\n  address = \"{addr}\"\n"
        ));
    }
    text
}

fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// Requests lost: failed, or not even sent for want of a connection.
fn lost(t: &Tally) -> u64 {
    t.failed.load(Ordering::SeqCst) + t.connect_errors.load(Ordering::SeqCst)
}

/// Requests lost after `at`.
fn lost_after(t: &Tally, at: Instant) -> usize {
    let failed_at = t.failed_at.lock().unwrap_or_else(|e| e.into_inner());
    failed_at.iter().filter(|&&f| f > at).count()
}

/// One GET of `path` on `s`; whether a 200 came back.
async fn get(s: &mut TcpStream, path: &str) -> bool {
    let req = format!("GET {path} HTTP/1.1\r\nHost: alpha.test\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    matches!(read_answer(s).await, Ok((status, _)) if status == "200")
}

/// Clients that never retry (`handover`'s): `keep_alive` of them on kept-alive connections,
/// `per_request` with a connection each, until stopped.
fn load(port: u16, keep_alive: usize, per_request: usize) -> Load {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..keep_alive + per_request {
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(match i < keep_alive {
            true => tokio::spawn(keep_alive_client(local(port), stop, tally)),
            false => tokio::spawn(per_request_client(local(port), stop, tally)),
        });
    }
    Load { tally, stop, tasks }
}

struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.tally
    }
}

/// The node, started from `text` and serving before this returns.
async fn node(dir: &Path, text: &str, port: u16) -> (Proc, SocketAddr) {
    let path = dir.join("anyedge.toml");
    write_config(&path, text);
    let admin = local(free_port());
    let bin = Path::new(env!("CARGO_BIN_EXE_anyedge"));
    let node = Proc::anyedge_run(bin, &path, admin, &dir.join("node.log"), None);
    eventually("the app serves", WAIT, || async {
        let mut s = TcpStream::connect(local(port)).await.ok()?;
        get(&mut s, "/").await.then_some(())
    })
    .await;
    (node, admin)
}

/// One series' value from the admin listener's `/metrics` (0 when absent).
async fn admin_metric(admin: SocketAddr, series: &str) -> f64 {
    let mut s = TcpStream::connect(admin).await.expect("admin");
    let req = "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.expect("write");
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut text)
        .await
        .expect("read");
    anyedge_test_support::cluster::metric(&text, series)
}

fn row(fault: &str, tally: &Tally, note: &str) {
    let sent = tally.sent.load(Ordering::SeqCst) + tally.connect_errors.load(Ordering::SeqCst);
    println!("| {fault} | {sent} | {} | {note} |", lost(tally));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_in_twenty_seconds_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let insts = [
        HttpInstance::start("one", false).await,
        HttpInstance::start("two", false).await,
        HttpInstance::start("three", false).await,
    ];
    let addrs: Vec<SocketAddr> = insts.iter().map(|i| i.addr).collect();
    let port = free_port();
    let path = dir.path().join("anyedge.toml");
    let (mut node, _admin) = node(dir.path(), &config(port, &addrs[..2], ""), port).await;
    let load = load(port, 6, 2);
    let started = Instant::now();
    for i in 0..100u32 {
        // Instances come and go (one of the two first always stays), ports stay.
        let set: &[SocketAddr] = match i % 3 {
            0 => &addrs[..3],
            1 => &addrs[1..],
            _ => &addrs[..2],
        };
        write_config(&path, &config(port, set, &format!("# reload {i}")));
        node.signal(libc::SIGHUP);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let tally = load.stop().await;
    row("100 reloads", &tally, &format!("in {took:.1?}"));
    assert!(tally.ok.load(Ordering::SeqCst) > 500, "the load ran");
    assert_eq!(lost(&tally), 0, "requests lost to reloads");
    assert!(node.try_exit_code().is_none(), "the node kept running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_config_then_a_good_one_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        HttpInstance::start("a", false).await,
        HttpInstance::start("b", false).await,
    );
    let port = free_port();
    let path = dir.path().join("anyedge.toml");
    let (mut node, _admin) = node(dir.path(), &config(port, &[a.addr], ""), port).await;
    let load = load(port, 6, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for broken in [
        "[[apps]]\nname = \"app\"\nbogus = 1\n".to_string(),
        "\u{0}\u{1}not toml at all [[[".to_string(),
        config(port, &[a.addr], "").replace("address", "adress"),
    ] {
        write_config(&path, &broken);
        node.signal(libc::SIGHUP);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    write_config(&path, &config(port, &[a.addr, b.addr], ""));
    node.signal(libc::SIGHUP);
    eventually("the good config is in force", WAIT, || async {
        (b.requests() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;
    row("3 corrupted configs, then a good one", &tally, "");
    assert_eq!(lost(&tally), 0, "requests lost to a bad config");
    assert!(node.try_exit_code().is_none(), "the node kept running");
}

/// An instance dies (every socket it had closes at once) under steady load: no GET is lost.
/// Those in flight on it fail before any response byte and go to the healthy instance
/// (`[http] retry_on` has `reset`); new ones find it refusing connections and go there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_loses_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let healthy = HttpInstance::start("healthy", false).await;
    // The instance that dies runs on a runtime of its own: dropping that runtime closes every
    // socket it had, as a crash would.
    let doomed_rt = Runtimes::current_thread(1, "doomed");
    let doomed = doomed_rt
        .handle(0)
        .spawn(HttpInstance::start("doomed", false))
        .await
        .expect("doomed instance");
    let port = free_port();
    let text = config(port, &[healthy.addr, doomed.addr], "");
    let (mut node, admin) = node(dir.path(), &text, port).await;
    let load = load(port, 6, 2);
    eventually("both instances serve", WAIT, || async {
        (doomed.requests() > 50 && healthy.requests() > 50).then_some(())
    })
    .await;
    let killed = Instant::now();
    drop(doomed_rt);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let tally = load.stop().await;
    let late = lost_after(&tally, killed + Duration::from_secs(2));
    let series = |reason| format!("anyedge_retries_total{{app=\"app\",reason=\"{reason}\"}}");
    let reset = admin_metric(admin, &series("reset")).await;
    let connect = admin_metric(admin, &series("connect")).await;
    row(
        "an instance killed",
        &tally,
        &format!("{late} lost from 2 s after; retried elsewhere: {reset} in flight on it, {connect} that found it gone"),
    );
    assert_eq!(lost(&tally), 0, "requests lost: {:?}", tally.errors);
    drop(doomed);
    assert!(node.try_exit_code().is_none(), "the node kept running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_slow_requests_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = HttpInstance::start("slow", false).await;
    let port = free_port();
    let (mut node, _admin) = node(dir.path(), &config(port, &[inst.addr], ""), port).await;
    // Five requests of 1.5 s each in flight when the node is told to stop.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(local(port)).await.expect("connect");
        slow.push(tokio::spawn(async move { get(&mut s, "/slow/1500").await }));
    }
    eventually("the slow requests reached the instance", WAIT, || async {
        (inst.requests() >= 5).then_some(())
    })
    .await;
    node.signal(libc::SIGTERM);
    let mut done = 0;
    for s in slow {
        if s.await.expect("task") {
            done += 1;
        }
    }
    println!(
        "| SIGTERM with 5 slow requests in flight | 5 | {} | |",
        5 - done
    );
    assert_eq!(done, 5, "slow requests cut by the drain");
    let code = eventually("the node exits", WAIT, || {
        std::future::ready(node.try_exit_code())
    })
    .await;
    assert_eq!(code, Some(0));
}

/// An HTTP/1.1 instance that answers `200` to every bodiless request, or, once hung, reads
/// requests and never answers (connections stay open: a deadlock, not a crash). Counts the
/// node's probes (`User-Agent: anyedge-health`) apart from client requests.
struct Hangable {
    addr: SocketAddr,
    hung: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    probes: Arc<AtomicU64>,
}

impl Hangable {
    async fn start() -> Hangable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let me = Hangable {
            addr,
            hung: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(AtomicU64::new(0)),
            probes: Arc::new(AtomicU64::new(0)),
        };
        let (hung, requests, probes) = (me.hung.clone(), me.requests.clone(), me.probes.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (hung, requests, probes) = (hung.clone(), requests.clone(), probes.clone());
                tokio::spawn(async move {
                    let mut s = s;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            buf.drain(..end + 4);
                            match head.contains("user-agent: anyedge-health") {
                                true => probes.fetch_add(1, Ordering::SeqCst),
                                false => requests.fetch_add(1, Ordering::SeqCst),
                            };
                            if hung.load(Ordering::SeqCst) {
                                return std::future::pending::<()>().await;
                            }
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                        match tokio::io::AsyncReadExt::read(&mut s, &mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        me
    }
}

/// An instance hangs (accepts, reads, never answers) under steady load: no GET is lost. The
/// ones it holds and those placed on it until `consecutive_failures` of them time out (all
/// within 2 s with `response_timeout = "500ms"`) go to the healthy instance when their
/// timeout ends (`[http] retry_on`); after that, ejected, it gets no client request,
/// and the node's own probes (not a client's request) find it still hung each time its
/// ejection ends. Once it answers again a probe passes and it takes requests again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_instance_loses_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let healthy = HttpInstance::start("healthy", false).await;
    let hangs = Hangable::start().await;
    let port = free_port();
    let text = config(
        port,
        &[healthy.addr, hangs.addr],
        "\n[http]\nresponse_timeout = \"500ms\"",
    );
    let (mut node, admin) = node(dir.path(), &text, port).await;
    let load = load(port, 6, 2);
    eventually("both instances serve", WAIT, || async {
        (hangs.requests.load(Ordering::SeqCst) > 50 && healthy.requests() > 50).then_some(())
    })
    .await;
    hangs.hung.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client_requests = hangs.requests.load(Ordering::SeqCst);
    // Long enough for three ejections (1 s, 2 s, 4 s) and their failed probes (2 s each).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let probes = hangs.probes.load(Ordering::SeqCst);
    let late_to_hung = hangs.requests.load(Ordering::SeqCst) - client_requests;
    hangs.hung.store(false, Ordering::SeqCst);
    let answering = Instant::now();
    let before = hangs.requests.load(Ordering::SeqCst);
    eventually("it takes requests again", WAIT, || async {
        (hangs.requests.load(Ordering::SeqCst) > before + 10).then_some(())
    })
    .await;
    let back_after = answering.elapsed();
    let tally = load.stop().await;
    let retried = admin_metric(
        admin,
        "anyedge_retries_total{app=\"app\",reason=\"timeout\"}",
    )
    .await;
    row(
        "an instance hung 12 s (response_timeout 500ms)",
        &tally,
        &format!(
            "{retried} timed out on it and were sent to the other instance; {probes} probes by the node, {late_to_hung} client requests reached it from 2 s after; back {back_after:?} after it answered again"
        ),
    );
    assert_eq!(lost(&tally), 0, "requests lost: {:?}", tally.errors);
    assert!(retried >= 1.0, "no request timed out on the hung instance");
    assert_eq!(
        late_to_hung, 0,
        "client requests reached the ejected instance"
    );
    assert!(probes >= 2, "only {probes} probes");
    assert!(node.try_exit_code().is_none(), "the node kept running");
}
