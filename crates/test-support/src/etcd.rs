//! A real etcd server (Debian's `etcd-server`, `/usr/bin/etcd`) for cluster tests: free ports,
//! a temporary data directory, started and awaited until healthy, stopped by its pid. It can be
//! stopped and started again on the same ports and data (an outage).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Clients over TLS: (CA that signs client certificates, server cert, server key).
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Where this run's part of the log starts.
    log_from: usize,
}

/// The etcd binary: `ANYEDGE_ETCD` if set, else `/usr/bin/etcd`.
pub fn binary() -> PathBuf {
    std::env::var_os("ANYEDGE_ETCD").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

impl Etcd {
    /// Start etcd on free loopback ports and wait until it is healthy.
    pub fn start() -> Etcd {
        Self::start_with(None)
    }

    /// Like [`Etcd::start`], serving clients over TLS with `cert`/`key` and requiring client
    /// certificates signed by `ca`.
    pub fn start_tls(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Etcd {
        Self::start_with(Some((ca, cert, key)))
    }

    fn start_with(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Etcd {
        let mut etcd = Etcd {
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
            dir: tempfile::tempdir().expect("etcd data dir"),
            child: None,
            tls,
            log_from: 0,
        };
        etcd.start_again();
        etcd
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Start the stopped server again, on the same ports and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        self.log_from = self.log().len();
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let mut command = Command::new(binary());
        command
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((ca, cert, key)) = &self.tls {
            command
                .arg(format!("--trusted-ca-file={}", ca.display()))
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg("--client-cert-auth");
        }
        if std::env::consts::ARCH != "x86_64" {
            // etcd 3.4 refuses to start on other architectures unless told.
            command.env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        }
        self.child = Some(
            command
                .spawn()
                .expect("spawn etcd (apt-get install etcd-server)"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server (SIGKILL to its pid) and wait for it; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze the server (SIGSTOP to its pid): connections stay open and nothing answers;
    /// its clock goes on, so leases expire as soon as it runs again ([`Etcd::resume`]).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Let a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid, which we have not waited for.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        }
    }

    /// `GET /health` answers `"health":"true"` (with TLS: the log says it serves clients).
    pub fn healthy(&self) -> bool {
        if self.tls.is_some() {
            let log = self.log();
            return log
                .get(self.log_from..)
                .is_some_and(|run| run.contains("ready to serve client requests"));
        }
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// The store's current revision, through etcd's JSON gateway (a range read of one key);
    /// `None` when etcd does not answer (or serves TLS).
    pub fn revision(&self) -> Option<i64> {
        if self.tls.is_some() {
            return None;
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let body = r#"{"key":"AA=="}"#;
        let req = format!(
            "POST /v3/kv/range HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (_, json) = text.split_once("\r\n\r\n")?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        v.get("header")?.get("revision")?.as_str()?.parse().ok()
    }

    /// A key's `create_revision` and lease id (0: none), through etcd's JSON gateway; `None`
    /// when the key does not exist or etcd does not answer. A key deleted and put again has a
    /// new `create_revision`.
    pub fn key_info(&self, key: &str) -> Option<(i64, i64)> {
        if self.tls.is_some() {
            return None;
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let body = format!(r#"{{"key":"{}"}}"#, base64(key.as_bytes()));
        let req = format!(
            "POST /v3/kv/range HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (_, json) = text.split_once("\r\n\r\n")?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let kv = v.get("kvs")?.get(0)?;
        let number = |name: &str| -> i64 {
            kv.get(name)
                .and_then(|n| n.as_str())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Some((number("create_revision"), number("lease")))
    }

    /// What etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

/// Standard base64 with padding (etcd's JSON gateway takes keys so).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a command printed, as text: (stdout, stderr).
pub fn output_text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

impl Etcd {
    /// Run the `anyedge` binary `bin` with `ARGS... --etcd URL` against this etcd.
    pub fn cli(&self, bin: &std::path::Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin)
            .args(args)
            .args(["--etcd", &self.url()])
            .output()
            .expect("run anyedge")
    }
}
