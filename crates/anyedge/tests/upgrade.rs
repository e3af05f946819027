//! Binary upgrades by socket hand-over, as operators run them: `anyedge run --upgrade` with the
//! same config takes every listening socket over from the running node through its control
//! socket, and the old node drains. Under steady load from clients that never retry (HTTP/1.1
//! keep-alive clients that reconnect only after a `Connection: close`, clients that open a
//! connection per request, and HTTP/2 clients that send again only what a GOAWAY proves
//! unprocessed), 20 upgrades in a row lose no request and refuse no connection. A
//! failed upgrade (no node at the socket, a new process that cannot start, a malformed
//! message) leaves the running node serving; the control socket is owner-only.

use anyedge_core::control::{Message, MAGIC};
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
const UPGRADES: u64 = 20;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    control: PathBuf,
    port: u16,
    admin: SocketAddr,
    _inst: HttpInstance,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let inst = HttpInstance::start("alpha", false).await;
        let (port, admin) = (free_port(), local(free_port()));
        let control = dir.path().join("control.sock");
        let config = dir.path().join("anyedge.toml");
        std::fs::write(&config, config_text(&control, port, inst.addr, "", "")).expect("config");
        Setup {
            dir,
            config,
            control,
            port,
            admin,
            _inst: inst,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// `anyedge run` on the config (with `--upgrade` if asked), logging to `name.log`.
    fn run(&self, name: &str, upgrade: bool) -> Proc {
        let config = self.config.to_str().expect("utf-8");
        let admin = self.admin.to_string();
        let mut args = vec!["run", "--config", config, "--admin-listen", &admin];
        if upgrade {
            args.push("--upgrade");
        }
        Proc::spawn(bin(), &args, &self.log(name))
    }

    async fn serving(&self) {
        let addr = local(self.port);
        eventually("the node answers", WAIT, || async move {
            get_once(addr).await.ok().filter(|s| s == "200")
        })
        .await;
    }
}

/// Two shards, so every address is two `SO_REUSEPORT` sockets to hand over. `extra_ports` is
/// appended to the service's ports, `certificates` to the app's blocks.
fn config_text(
    control: &Path,
    port: u16,
    inst: SocketAddr,
    extra_ports: &str,
    certificates: &str,
) -> String {
    format!(
        "[node]\nthreads = 2\ndrain_timeout = \"20s\"\ncontrol_socket = \"{}\"\n\n[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }}{extra_ports} ]\n{certificates}  [[apps.instances]]\n  id = \"alpha-1\"\n  address = \"{inst}\"\n",
        control.display()
    )
}

/// `STATUS` on the control socket: the answering node's pid and process generation.
fn status(path: &Path) -> Option<(u32, u64)> {
    let answer = exchange(path, format!("{MAGIC} STATUS\n").as_bytes())?;
    let Message::Ok(lines) = answer else {
        return None;
    };
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((u32::try_from(field("pid ")?).ok()?, field("generation ")?))
}

/// Send `bytes` as one message on the control socket; the answer.
fn exchange(path: &Path, bytes: &[u8]) -> Option<Message> {
    let mut s = Socket::new(Domain::UNIX, Type::SEQPACKET, None).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.connect(&SockAddr::unix(path).ok()?).ok()?;
    s.write_all(bytes).ok()?;
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).ok()?;
    Message::decode(&buf[..n], 0).ok()
}

/// One request on its own connection; the status code.
async fn get_once(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
        .await?;
    let (status, _) = read_answer(&mut s).await?;
    Ok(status)
}

/// Read one answer: its status code and whether it closes the connection.
async fn read_answer(s: &mut TcpStream) -> std::io::Result<(String, bool)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let cut = |what: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_string());
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(cut("closed before an answer"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut status = head.split(' ').nth(1).unwrap_or("").to_string();
    // A proxy-made answer names its error code: kept with the status for the failure's report.
    if let Some(code) = head.lines().find_map(|l| l.strip_prefix("anyedge-error:")) {
        status = format!("{status} {}", code.trim());
    }
    if head.contains("transfer-encoding: chunked") {
        // Small bodies: read up to the last chunk.
        while !buf[head_end..].ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(cut("closed inside the chunked body"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Ok((status, head.contains("connection: close")));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| cut("no content-length"))?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(cut("closed inside the body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if !status.starts_with("200") {
        // The proxy says why in the body: kept for the failure's report.
        status = format!(
            "{status}: {}",
            String::from_utf8_lossy(&buf[head_end..]).trim()
        );
    }
    Ok((status, head.contains("connection: close")))
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    /// A request written (or attempted on an open connection) without a 200 answer.
    failed: AtomicU64,
    /// A connection that could not be opened.
    connect_errors: AtomicU64,
    /// Keep-alive connections the server closed after a `Connection: close` answer.
    closed_by_server: AtomicU64,
    /// HTTP/2 requests the server provably did not process, sent again on a new connection.
    h2_unprocessed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

const PAUSE: Duration = Duration::from_millis(3);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests one after another on one connection; a new connection only after the server
/// closed the last with `Connection: close`. No retries.
async fn keep_alive_client(addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut s = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    t.fail(&t.connect_errors, format!("keep-alive connect: {e}"));
                    tokio::time::sleep(PAUSE).await;
                    continue;
                }
            },
        };
        t.sent.fetch_add(1, Ordering::SeqCst);
        let asked = async {
            s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
                .await?;
            read_answer(&mut s).await
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
            Ok(Ok((status, close))) if status == "200" => {
                t.ok.fetch_add(1, Ordering::SeqCst);
                if close {
                    t.closed_by_server.fetch_add(1, Ordering::SeqCst);
                } else {
                    conn = Some(s);
                }
            }
            Ok(Ok((status, _))) => t.fail(&t.failed, format!("keep-alive: status {status}")),
            Ok(Err(e)) => t.fail(&t.failed, format!("keep-alive: {e}")),
            Err(_) => t.fail(&t.failed, "keep-alive: no answer in time".into()),
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// A new connection for every request (`Connection: close`). No retries.
async fn per_request_client(addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    while !stop.load(Ordering::SeqCst) {
        let mut s = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                t.fail(&t.connect_errors, format!("per-request connect: {e}"));
                tokio::time::sleep(PAUSE).await;
                continue;
            }
        };
        t.sent.fetch_add(1, Ordering::SeqCst);
        let asked = async {
            s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
                .await?;
            read_answer(&mut s).await
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
            Ok(Ok((status, _))) if status == "200" => {
                t.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok((status, _))) => t.fail(&t.failed, format!("per-request: status {status}")),
            Ok(Err(e)) => t.fail(&t.failed, format!("per-request: {e}")),
            Err(_) => t.fail(&t.failed, "per-request: no answer in time".into()),
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// HTTP/2 (h2c) requests one after another on one connection, a new connection once the old
/// one is closed. No retries of a request the server may have processed; a request the server
/// provably did not process is sent on a new connection, as every HTTP/2 client does (RFC 9113
/// §6.8): one refused by the GOAWAY (its stream above the last one the server took; h2 also
/// refuses, unsent, a stream opened after a GOAWAY arrived), or one hyper never handed to the
/// connection before it closed. Those are counted in `h2_unprocessed`.
async fn h2_client(addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    use http_body_util::{BodyExt, Empty};
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    type Sender = http2::SendRequest<Empty<bytes::Bytes>>;
    let mut sender: Option<Sender> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut s = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let connected = async {
                    let stream = TcpStream::connect(addr).await?;
                    http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                        .await
                        .map_err(std::io::Error::other)
                };
                match connected.await {
                    Ok((s, conn)) => {
                        tokio::spawn(conn);
                        s
                    }
                    Err(e) => {
                        t.fail(&t.connect_errors, format!("h2 connect: {e}"));
                        tokio::time::sleep(PAUSE).await;
                        continue;
                    }
                }
            }
        };
        if s.ready().await.is_err() {
            continue;
        }
        let request = hyper::Request::get("http://alpha.test/")
            .body(Empty::new())
            .expect("request");
        let asked = async {
            let resp = s.try_send_request(request).await?;
            let status = resp.status();
            Ok::<_, hyper::client::conn::TrySendError<_>>(
                resp.into_body().collect().await.map(|_| status),
            )
        };
        let answered = tokio::time::timeout(ANSWER_TIMEOUT, asked).await;
        let unprocessed = matches!(&answered, Ok(Err(e)) if e.message().is_some() || refused_by_goaway(e.error()));
        if unprocessed {
            // Not processed: the same request goes out on a new connection.
            t.h2_unprocessed.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        t.sent.fetch_add(1, Ordering::SeqCst);
        match answered {
            Ok(Ok(Ok(status))) if status == hyper::StatusCode::OK => {
                t.ok.fetch_add(1, Ordering::SeqCst);
                sender = Some(s);
            }
            Ok(Ok(Ok(status))) => t.fail(&t.failed, format!("h2: status {status}")),
            Ok(Ok(Err(e))) => t.fail(&t.failed, format!("h2 body: {e:?}")),
            Ok(Err(e)) => t.fail(&t.failed, format!("h2: {:?}", e.error())),
            Err(_) => t.fail(&t.failed, "h2: no answer in time".into()),
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// A stream the server refused with its GOAWAY (no error), or a request hyper canceled
/// before sending it because the connection closed.
fn refused_by_goaway(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    if e.is_canceled() {
        return true;
    }
    e.source()
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h| {
            h.is_go_away() && h.is_remote() && h.reason() == Some(h2::Reason::NO_ERROR)
        })
}

async fn admin_metrics(admin: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

async fn exited(p: &mut Proc, what: &str) -> Option<i32> {
    eventually(what, WAIT, || {
        let code = p.try_exit_code();
        async move { code }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_upgrades_under_load_lose_nothing() {
    let setup = Setup::new().await;
    let mut current = setup.run("node-0", false);
    setup.serving().await;
    let control = setup.control.clone();
    let first = eventually("the control socket answers", WAIT, || {
        let c = control.clone();
        async move { status(&c) }
    })
    .await;
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
    let control = setup.control.clone();
    eventually("the control socket answers", WAIT, || {
        let c = control.clone();
        async move { status(&c) }
    })
    .await;

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
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let setup = Setup::new().await;
    let mut old = setup.run("old", false);
    setup.serving().await;
    let control = setup.control.clone();
    let (old_pid, _) = eventually("the control socket answers", WAIT, || {
        let c = control.clone();
        async move { status(&c) }
    })
    .await;

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
    new.signal(libc::SIGTERM);
    assert_eq!(exited(&mut new, "the new node stops").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_owner_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let setup = Setup::new().await;
    let mut node = setup.run("node", false);
    setup.serving().await;
    let control = setup.control.clone();
    eventually("the control socket answers", WAIT, || {
        let c = control.clone();
        async move { status(&c) }
    })
    .await;
    let meta = std::fs::metadata(&setup.control).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    node.signal(libc::SIGTERM);
    assert_eq!(exited(&mut node, "the node stops").await, Some(0));
    assert!(!setup.control.exists(), "removed on exit");
}

/// A process this test started but is not the parent of: SIGKILL by its pid if the test ends
/// early.
struct Stray(u32);

impl Drop for Stray {
    fn drop(&mut self) {
        if !gone(self.0) {
            // SAFETY: kill(2) on the pid of a process this test started.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Whether `pid` is gone (or a zombie no one reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_command_waits_for_the_new_process_and_tells_systemd() {
    use std::os::unix::net::UnixDatagram;
    let setup = Setup::new().await;
    let mut old = setup.run("old", false);
    setup.serving().await;
    let control = setup.control.clone();
    eventually("the control socket answers", WAIT, || {
        let c = control.clone();
        async move { status(&c) }
    })
    .await;
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

/// One request over TLS with `client` (its session cache carries tickets from one connection to
/// the next); how the handshake went, once the whole answer (and the tickets) came.
async fn tls_get(
    client: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Option<rustls::HandshakeKind> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("alpha.test").ok()?;
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .ok()?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    tls.get_ref().1.handshake_kind()
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

const WORKER_UPGRADES: usize = 5;

/// A worker's backhaul listener is handed over too, and requests that reach it through an edge
/// lose nothing: streams that reach the old worker before its GOAWAY are served there, the load
/// feed ends with the drain so the old connections close at once, and the edge sends a stream
/// the GOAWAY refused to the same worker on a new connection (the new process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_hands_its_backhaul_listener_over() {
    use anyedge_test_support::cluster::{Node, Pki};
    let pki = Pki::new();
    let inst = HttpInstance::start("alpha", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, backhaul, admin) = (free_port(), free_port(), local(free_port()));
    let control = dir.path().join("w1.sock");
    let app = format!(
        "[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n[[apps.services]]\ninternal_port = 1\nports = [ {{ port = {http_port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    let worker_config = dir.path().join("w1.toml");
    std::fs::write(
        &worker_config,
        format!(
            "[node]\nid = \"w1\"\nroles = [\"worker\"]\nthreads = 2\nbackhaul_listen = \"127.0.0.1:{backhaul}\"\ndrain_timeout = \"10s\"\ncontrol_socket = \"{}\"\n{}{app}[[apps.instances]]\nid = \"real\"\naddress = \"{}\"\n",
            control.display(),
            pki.cluster_section("w1"),
            inst.addr
        ),
    )
    .expect("config");
    let edge = Node::start(bin(), "edge1", &format!(
        "[node]\nid = \"edge1\"\nroles = [\"edge\"]\ndrain_timeout = \"1s\"\n{}[[nodes]]\nid = \"w1\"\nadvertise = \"127.0.0.1:{backhaul}\"\n{app}[[apps.instances]]\nid = \"real\"\naddress = \"{}\"\nnode = \"w1\"\n",
        pki.cluster_section("edge1"),
        inst.addr
    ));
    let config = worker_config.to_str().expect("utf-8");
    let admin_arg = admin.to_string();
    let run = |n: usize, upgrade: bool| {
        let mut args = vec!["run", "--config", config, "--admin-listen", &admin_arg];
        if upgrade {
            args.push("--upgrade");
        }
        Proc::spawn(bin(), &args, &dir.path().join(format!("w1-{n}.log")))
    };
    let mut worker = run(0, false);
    edge.up().await;
    let addr = local(http_port);
    eventually("routable over backhaul", WAIT, || async move {
        get_once(addr).await.ok().filter(|s| s == "200")
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(tokio::spawn(keep_alive_client(
            addr,
            stop.clone(),
            tally.clone(),
        )));
        clients.push(tokio::spawn(per_request_client(
            addr,
            stop.clone(),
            tally.clone(),
        )));
    }
    for n in 1..=WORKER_UPGRADES {
        let mut next = run(n, true);
        let (pid, c) = (next.pid(), control.clone());
        eventually("the new worker answers on its control socket", WAIT, || {
            let c = c.clone();
            async move { status(&c).filter(|s| s.0 == pid) }
        })
        .await;
        assert_eq!(exited(&mut worker, "the old worker drains").await, Some(0));
        let log =
            std::fs::read_to_string(dir.path().join(format!("w1-{n}.log"))).unwrap_or_default();
        let backhaul_line = log
            .lines()
            .find(|l| l.contains("backhaul listening"))
            .unwrap_or_default()
            .to_string();
        assert!(backhaul_line.contains("adopted=2"), "{log}");
        let before = tally.ok.load(Ordering::SeqCst);
        eventually(
            "requests go on over the new worker's backhaul",
            WAIT,
            || {
                let n = tally.ok.load(Ordering::SeqCst);
                async move { (n > before + 200).then_some(()) }
            },
        )
        .await;
        assert!(next.try_exit_code().is_none());
        worker = next;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let (sent, ok, failed, refused) = (
        tally.sent.load(Ordering::SeqCst),
        tally.ok.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.connect_errors.load(Ordering::SeqCst),
    );
    let logs: Vec<String> = edge
        .logs()
        .lines()
        .filter(|l| l.contains("status=5"))
        .take(5)
        .map(String::from)
        .chain((0..=WORKER_UPGRADES).flat_map(|n| {
            std::fs::read_to_string(dir.path().join(format!("w1-{n}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("refused") || l.contains("WARN") || l.contains("ERROR"))
                .map(|l| format!("w1-{n}: {l}"))
                .collect::<Vec<_>>()
        }))
        .collect();
    eprintln!("{WORKER_UPGRADES} worker upgrades: {sent} requests through the edge, {ok} answered, {failed} failed, {refused} connection errors");
    let errors = tally.errors.lock().map(|e| e.clone()).unwrap_or_default();
    assert_eq!(
        (failed, refused),
        (0, 0),
        "errors: {errors:?}; logs: {logs:#?}"
    );
    worker.signal(libc::SIGTERM);
    assert_eq!(exited(&mut worker, "the worker stops").await, Some(0));
}
