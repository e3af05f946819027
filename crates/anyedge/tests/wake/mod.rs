//! What the on-demand tests share (`on_demand.rs` on one node, `on_demand_cluster.rs` over
//! backhaul): instance processes started by the `command` driver (the test binary run again as
//! a small HTTP server that listens only after a delay), and a burst of concurrent requests.
#![allow(dead_code)] // each test binary uses its own part

use anyedge_test_support::http_client::Client;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One instance process's settings, passed on its command line's environment.
pub struct Proc<'a> {
    pub id: &'a str,
    pub port: u16,
    pub delay_ms: u64,
    pub dir: &'a Path,
}

impl Proc<'_> {
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join(format!("{}.pid", self.id))
    }

    /// The shell line that launches it in the background and returns (its pid in a file,
    /// each start counted in another).
    pub fn start_line(&self) -> String {
        let exe = std::env::current_exe().expect("test binary");
        format!(
            "echo start >> {dir}/{id}.starts; echo \"launching $ANYEDGE_INSTANCE of $ANYEDGE_APP at $ANYEDGE_ADDRESS\"; ANYEDGE_TEST_INSTANCE={id} ANYEDGE_TEST_PORT={port} ANYEDGE_TEST_DELAY_MS={delay} ANYEDGE_TEST_READY_FILE={dir}/{id}.ready {exe} --exact wake::instance_process --ignored --nocapture >/dev/null 2>&1 & echo $! > {pid}",
            dir = self.dir.display(),
            id = self.id,
            port = self.port,
            delay = self.delay_ms,
            exe = exe.display(),
            pid = self.pid_file().display(),
        )
    }

    pub fn stop_line(&self) -> String {
        format!(
            "echo stop >> {dir}/{id}.stops; kill $(cat {pid})",
            dir = self.dir.display(),
            id = self.id,
            pid = self.pid_file().display()
        )
    }

    pub fn driver(&self) -> String {
        format!(
            "driver = {{ type = \"command\", start = {:?}, stop = {:?} }}",
            self.start_line(),
            self.stop_line()
        )
    }

    pub fn count(&self, what: &str) -> usize {
        std::fs::read_to_string(self.dir.join(format!("{}.{what}", self.id)))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Stop the process by its pid, if it runs.
    pub fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: a plain kill(2) of the pid this test's start command recorded.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The instance process: waits `ANYEDGE_TEST_DELAY_MS`, then listens on `ANYEDGE_TEST_PORT`
/// and answers every HTTP/1.1 request 200 with its id (`GET /slow` after 1.5 s); writes the time it started listening
/// (ms since the epoch) to `ANYEDGE_TEST_READY_FILE`. Exits by itself after 120 s should
/// nobody stop it.
#[test]
#[ignore = "not a test: the instance process the on-demand tests' start commands run"]
pub fn instance_process() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let id = var("ANYEDGE_TEST_INSTANCE");
    let port: u16 = var("ANYEDGE_TEST_PORT").parse().expect("port");
    let delay: u64 = var("ANYEDGE_TEST_DELAY_MS").parse().expect("delay");
    let ready = var("ANYEDGE_TEST_READY_FILE");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let listener = tokio::net::TcpListener::bind(local(port))
            .await
            .expect("bind");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        std::fs::write(&ready, now.to_string()).expect("ready file");
        let serve = async {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let id = id.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                        if buf.starts_with(b"GET /slow ") {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        buf.drain(..end);
                        let body = format!("hello from {id}\n");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-instance: {id}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(120), serve).await;
    });
}

pub fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// `n` concurrent GETs, each on its own connection: (status, error code, elapsed, ms since the
/// epoch at the answer) of each. Every 503 must carry `Retry-After`.
pub async fn burst(port: u16, n: usize) -> Vec<(u16, String, Duration, u128)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let t = Instant::now();
                let mut c = Client::h1(local(port)).await;
                let (status, headers, _) = c.get("sleepy.test", "/").await;
                let code = headers
                    .get("anyedge-error")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if status == 503 {
                    assert!(
                        headers.contains_key("retry-after"),
                        "{code}: no Retry-After"
                    );
                }
                (status, code, t.elapsed(), epoch_ms())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}
