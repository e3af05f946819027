//! Helpers for multi-node cluster tests: an `anyedge run` node whose config file can be
//! rewritten (the node reloads on a file change), killed with SIGKILL and started again on the
//! same file and admin port; a plain HTTP/1.0 GET; and a hand-made backhaul client (mutual TLS
//! with whatever certificate the test gives it, HTTP/2 or the raw-TCP header written byte by
//! byte from the documented wire format) to check what a worker's backhaul lets through.

use crate::process::Proc;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A cluster CA and node certificates in a temporary directory, made by the same code as
/// `anyedge certs cluster-ca` and `anyedge certs node`.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: anyedge_tls::cluster_ca::PemPair,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = anyedge_tls::cluster_ca::new_ca().expect("ca");
        std::fs::write(dir.path().join("cluster-ca.pem"), &ca.cert).expect("write");
        Pki { dir, ca }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> &anyedge_tls::cluster_ca::PemPair {
        &self.ca
    }

    /// `[cluster]` for node `id` (its certificate issued once, on first use).
    pub fn cluster_section(&self, id: &str) -> String {
        let d = self.dir.path();
        if !d.join(format!("{id}.pem")).exists() {
            let node = anyedge_tls::cluster_ca::issue_node(&self.ca, id).expect("node cert");
            std::fs::write(d.join(format!("{id}.pem")), &node.cert).expect("write");
            std::fs::write(d.join(format!("{id}-key.pem")), &node.key).expect("write");
        }
        format!(
            "[cluster]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            d.join("cluster-ca.pem").display(),
            d.join(format!("{id}.pem")).display(),
            d.join(format!("{id}-key.pem")).display()
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A plain HTTP/1.0 GET with extra header lines; `None` when the connection fails or closes
/// without a whole answer. Returns (status, head, body).
pub async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Option<(u16, String, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in extra {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((status, head.to_string(), body.to_string()))
}

/// [`get_with`] without extra headers: (status, body).
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    get_with(addr, host, path, &[])
        .await
        .map(|(s, _, b)| (s, b))
}

/// A raw TCP connection to `addr` that sent `line` and read back `greeting` (the echo
/// instance's first line, with its newline) and `line`, within 5 s; left open.
pub async fn tcp_echo(addr: SocketAddr, greeting: &str, line: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(line.as_bytes()).await.expect("write");
    let want = format!("{greeting}{line}");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 256];
        while got.len() < want.len() {
            let n = c.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed early after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("echo in time");
    assert_eq!(String::from_utf8_lossy(&got), want);
    c
}

/// The value of one Prometheus series (exact name with labels), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(series)?;
            rest.starts_with(' ').then(|| rest.trim().parse().ok())?
        })
        .unwrap_or(0.0)
}

/// An `anyedge run` process on a config file of its own, which the test may rewrite.
pub struct Node {
    bin: PathBuf,
    pub name: String,
    pub proc: Option<Proc>,
    pub admin: SocketAddr,
    pub config: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
    runs: usize,
}

impl Node {
    pub fn start(bin: &Path, name: &str, toml: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut node = Node {
            bin: bin.to_path_buf(),
            name: name.to_string(),
            proc: None,
            admin: local(crate::free_port()),
            config,
            log: dir.path().join("node-0.log"),
            dir,
            runs: 0,
        };
        node.start_again();
        node
    }

    /// Start the (killed) node again on the same file and admin port; a new log file.
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "{} is running", self.name);
        self.log = self.dir.path().join(format!("node-{}.log", self.runs));
        self.runs += 1;
        self.proc = Some(Proc::anyedge_run(
            &self.bin,
            &self.config,
            self.admin,
            &self.log,
            None,
        ));
    }

    /// SIGKILL and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGKILL);
            let _ = p.child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").pid()
    }

    /// Replace the config file's content (written to a temporary file and renamed, as editors
    /// and config managers do).
    pub fn rewrite(&self, toml: &str) {
        let tmp = self.dir.path().join("node.toml.tmp");
        std::fs::write(&tmp, toml).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub fn read_config(&self) -> String {
        std::fs::read_to_string(&self.config).expect("read config")
    }

    /// Every log of this node so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.runs {
            let text = std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log")))
                .unwrap_or_default();
            out += &format!("--- run {i} ---\n{text}");
        }
        out
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "admin", "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub async fn up(&self) {
        crate::eventually(
            &format!("{} up", self.name),
            Duration::from_secs(20),
            || async {
                get(self.admin, "admin", "/healthz")
                    .await
                    .filter(|(s, _)| *s == 200)
            },
        )
        .await;
    }

    /// Whether this node's snapshot has the instance (its concurrency series is listed).
    pub async fn knows_instance(&self, app: &str, instance: &str) -> bool {
        let needle = format!("anyedge_app_concurrency{{app=\"{app}\",instance=\"{instance}\"}}");
        self.metrics().await.contains(&needle)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- logs of node {} (admin {}) ---\n{}",
                self.name,
                self.admin,
                self.logs()
            );
        }
        // The Proc's own Drop kills it by pid.
        self.proc.take();
    }
}

/// A rustls client for a worker's backhaul: trusts `ca_pem`, offers `alpn`, and presents
/// `client` (certificate and key PEM) when given.
pub fn backhaul_client(
    ca_pem: &str,
    client: Option<(&str, &str)>,
    alpn: &[u8],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca pem"))
        .expect("add root");
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert pem")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key pem"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A client's TLS connection to a worker's backhaul.
pub type BackhaulStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS to `addr`, verifying the server as `server_name` (a worker's node id).
pub async fn backhaul_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<BackhaulStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// The raw-TCP backhaul header, written from the wire format in `anyedge-backhaul`'s docs
/// (magic `AEBH`, version 1, app and instance as length-prefixed names, client address family
/// 4 + address + port, edge port; integers big-endian).
pub fn tcp_header(app: &str, instance: &str, client: SocketAddr, edge_port: u16) -> Vec<u8> {
    let mut out = b"AEBH".to_vec();
    out.push(1);
    for name in [app, instance] {
        out.push(u8::try_from(name.len()).expect("short name"));
        out.extend_from_slice(name.as_bytes());
    }
    match client {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&edge_port.to_be_bytes());
    out
}
