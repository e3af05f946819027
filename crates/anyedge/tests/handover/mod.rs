//! What the upgrade tests share (`upgrade.rs`, `upgrade_backhaul.rs`; the fault suite,
//! `faults.rs`, uses the load clients): a node's config with a
//! control socket, `anyedge run` with and without `--upgrade`, `STATUS` on the control socket,
//! and load clients that never retry a request the server may have processed, counting every
//! request.
#![allow(dead_code)] // each test binary uses its own part

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

pub const WAIT: Duration = Duration::from_secs(30);
pub const UPGRADES: u64 = 20;

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub control: PathBuf,
    pub port: u16,
    pub admin: SocketAddr,
    pub _inst: HttpInstance,
}

impl Setup {
    pub async fn new() -> Setup {
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

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// `anyedge run` on the config (with `--upgrade` if asked), logging to `name.log`.
    pub fn run(&self, name: &str, upgrade: bool) -> Proc {
        let config = self.config.to_str().expect("utf-8");
        let admin = self.admin.to_string();
        let mut args = vec!["run", "--config", config, "--admin-listen", &admin];
        if upgrade {
            args.push("--upgrade");
        }
        Proc::spawn(bin(), &args, &self.log(name))
    }

    /// The node's pid and generation, once its control socket answers `STATUS`.
    pub async fn control_status(&self) -> (u32, u64) {
        let control = self.control.clone();
        eventually("the control socket answers", WAIT, || {
            let c = control.clone();
            async move { status(&c) }
        })
        .await
    }

    pub async fn serving(&self) {
        let addr = local(self.port);
        eventually("the node answers", WAIT, || async move {
            get_once(addr).await.ok().filter(|s| s == "200")
        })
        .await;
    }
}

/// Two shards, so every address is two `SO_REUSEPORT` sockets to hand over. `extra_ports` is
/// appended to the service's ports, `certificates` to the app's blocks.
pub fn config_text(
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
pub fn status(path: &Path) -> Option<(u32, u64)> {
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
pub fn exchange(path: &Path, bytes: &[u8]) -> Option<Message> {
    let mut s = Socket::new(Domain::UNIX, Type::SEQPACKET, None).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.connect(&SockAddr::unix(path).ok()?).ok()?;
    s.write_all(bytes).ok()?;
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).ok()?;
    Message::decode(&buf[..n], 0).ok()
}

/// One request on its own connection; the status code.
pub async fn get_once(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
        .await?;
    let (status, _) = read_answer(&mut s).await?;
    Ok(status)
}

/// Read one answer: its status code and whether it closes the connection.
pub async fn read_answer(s: &mut TcpStream) -> std::io::Result<(String, bool)> {
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
pub struct Tally {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    /// A request written (or attempted on an open connection) without a 200 answer.
    pub failed: AtomicU64,
    /// A connection that could not be opened.
    pub connect_errors: AtomicU64,
    /// Keep-alive connections the server closed after a `Connection: close` answer.
    pub closed_by_server: AtomicU64,
    /// HTTP/2 requests the server provably did not process, sent again on a new connection.
    pub h2_unprocessed: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    /// When each failure (or connect error) happened.
    pub failed_at: Mutex<Vec<std::time::Instant>>,
}

impl Tally {
    pub fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std::time::Instant::now());
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

pub const PAUSE: Duration = Duration::from_millis(3);
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests one after another on one connection; a new connection only after the server
/// closed the last with `Connection: close`. No retries.
pub async fn keep_alive_client(addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
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
pub async fn per_request_client(addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
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
pub async fn h2_client(addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
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
pub fn refused_by_goaway(e: &hyper::Error) -> bool {
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

pub async fn admin_metrics(admin: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

pub async fn exited(p: &mut Proc, what: &str) -> Option<i32> {
    eventually(what, WAIT, || {
        let code = p.try_exit_code();
        async move { code }
    })
    .await
}

/// A process this test started but is not the parent of: SIGKILL by its pid if the test ends
/// early.
pub struct Stray(pub u32);

impl Drop for Stray {
    fn drop(&mut self) {
        if !gone(self.0) {
            // SAFETY: kill(2) on the pid of a process this test started.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Whether `pid` is gone (or a zombie no one reaped yet).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// One request over TLS with `client` (its session cache carries tickets from one connection to
/// the next); how the handshake went, once the whole answer (and the tickets) came.
pub async fn tls_get(
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
