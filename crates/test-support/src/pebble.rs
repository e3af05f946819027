//! Pebble (the Let's Encrypt test CA, Debian package `pebble`) and `pebble-challtestsrv` as its
//! DNS, started on free loopback ports for one test and stopped by pid when dropped.
//!
//! Every test hostname resolves to 127.0.0.1, and Pebble sends its TLS-ALPN-01 validation
//! connections to `tls_port` there (the edge's TLS port). Pebble's own HTTPS listener gets a
//! certificate from a CA made here with rcgen: [`Pebble::ca_roots`] is that CA (the edge's
//! `[acme] ca_roots`). [`Pebble::issuer_root`] is the root Pebble signs certificates with,
//! fetched from its management port (it changes at every start).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Pebble {
    pub dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the CA that signed Pebble's HTTPS certificate.
    pub ca_roots: PathBuf,
    /// PEM of the root Pebble issues certificates under.
    pub issuer_root: String,
    pebble: Child,
    challtestsrv: Child,
    /// challtestsrv's management port (DNS records are set there).
    dns_management: u16,
    /// The CA of Pebble's own HTTPS certificate (kept for its directory).
    _https: crate::pki::Pki,
}

/// Options of one Pebble.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Where Pebble sends TLS-ALPN-01 validation connections (on 127.0.0.1).
    pub tls_port: u16,
    /// Lifetime of issued certificates in seconds (`certificateValidityPeriod`); Pebble's
    /// default (5 years) when `None`.
    pub validity_secs: Option<u64>,
}

/// The loopback ports of one Pebble and its challtestsrv.
struct Ports {
    /// Pebble's ACME server (the directory URL's port).
    listen: u16,
    /// Pebble's management API (`/roots/0`).
    management: u16,
    /// challtestsrv's DNS, which Pebble resolves with.
    dns: u16,
    /// challtestsrv's management API.
    dns_management: u16,
    /// Where Pebble sends HTTP-01 validations.
    http: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            listen: crate::free_port(),
            management: crate::free_port(),
            dns: crate::free_port(),
            dns_management: crate::free_port(),
            http: crate::free_port(),
        }
    }
}

impl Pebble {
    pub async fn start(options: PebbleOptions) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        // Pebble ships no certificate for its own HTTPS listener: one from a CA made here.
        let https = crate::pki::Pki::new();
        let (cert, key, _) = https.issue("pebble-https", &["localhost", "127.0.0.1"]);
        let ca_roots = https.write_ca("pebble-https-ca");
        let ports = Ports::free();
        let config_path = write_config(dir.path(), (&cert, &key), &ports, &options);
        let challtestsrv = spawn(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{}", ports.dns)])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args([
                    "-management",
                    &format!("127.0.0.1:{}", ports.dns_management),
                ]),
            &dir.path().join("challtestsrv.log"),
        );
        let pebble = spawn(
            Command::new("pebble")
                .args(["-config", config_path.to_str().expect("utf-8 path")])
                .args(["-dnsserver", &format!("127.0.0.1:{}", ports.dns)])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            &dir.path().join("pebble.log"),
        );
        // Made before waiting, so a start that times out still stops both processes.
        let mut this = Pebble {
            directory: format!("https://127.0.0.1:{}/dir", ports.listen),
            ca_roots: ca_roots.clone(),
            issuer_root: String::new(),
            dir,
            pebble,
            challtestsrv,
            dns_management: ports.dns_management,
            _https: https,
        };
        this.issuer_root = wait_ready(&ports, &ca_roots).await;
        this
    }

    /// Make `host` resolve to `ip` (instead of the default 127.0.0.1) for Pebble's validation
    /// connections, through challtestsrv's management API.
    pub async fn set_address(&self, host: &str, ip: Ipv4Addr) {
        let body = serde_json::json!({ "host": format!("{host}."), "addresses": [ip.to_string()] })
            .to_string();
        let request = format!(
            "POST /add-a HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.dns_management))
            .await
            .expect("challtestsrv management");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.expect("read");
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );
    }

    /// Pebble's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// A TLS connection to `addr` for `sni`, trusting only Pebble's issuing root.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.client_config(alpn));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        connector.connect(name, tcp).await
    }

    /// A rustls client config trusting only Pebble's issuing root.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let der = CertificateDer::pem_slice_iter(self.issuer_root.as_bytes())
            .next()
            .expect("a root in /roots/0")
            .expect("PEM root");
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("root");
        client_config(roots, alpn)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        // challtestsrv stops on SIGINT, not SIGTERM (PITFALLS.md).
        for (child, sig) in [
            (&mut self.challtestsrv, libc::SIGINT),
            (&mut self.pebble, libc::SIGTERM),
        ] {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        }
        for child in [&mut self.challtestsrv, &mut self.pebble] {
            for _ in 0..50 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pebble's config file, written in `dir`: its listeners on `ports`, the certificate and key
/// (`https`, paths) of its own HTTPS listener, and the options.
fn write_config(
    dir: &Path,
    https: (&Path, &Path),
    ports: &Ports,
    options: &PebbleOptions,
) -> PathBuf {
    let (cert, key) = https;
    let mut pebble = serde_json::json!({
        "listenAddress": format!("127.0.0.1:{}", ports.listen),
        "managementListenAddress": format!("127.0.0.1:{}", ports.management),
        "certificate": cert,
        "privateKey": key,
        "httpPort": ports.http,
        "tlsPort": options.tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    });
    if let Some(secs) = options.validity_secs {
        pebble["certificateValidityPeriod"] = secs.into();
    }
    let config_path = dir.join("pebble-config.json");
    let config = serde_json::json!({ "pebble": pebble });
    std::fs::write(&config_path, config.to_string()).expect("write pebble config");
    config_path
}

/// Wait until Pebble's management port answers (its HTTPS certificate is under the CA at
/// `ca_roots`) and challtestsrv listens; returns the root Pebble issues under.
async fn wait_ready(ports: &Ports, ca_roots: &Path) -> String {
    let management = SocketAddr::from((Ipv4Addr::LOCALHOST, ports.management));
    let roots = read_pem_cert(ca_roots);
    let what = "Pebble's management port answering /roots/0";
    let issuer_root = crate::eventually(what, Duration::from_secs(20), || {
        let roots = roots.clone();
        async move { https_get(management, "/roots/0", roots).await.ok() }
    })
    .await;
    let dns_management = ports.dns_management;
    crate::eventually(
        "challtestsrv listening",
        Duration::from_secs(20),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", dns_management))
                .await
                .ok()
        },
    )
    .await;
    issuer_root
}

fn spawn(command: &mut Command, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    let err = log.try_clone().expect("log file");
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?} (apt-get install pebble): {e}"))
}

fn read_pem_cert(path: &Path) -> RootCertStore {
    let pem = std::fs::read(path).expect("read CA");
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        roots.add(der.expect("PEM")).expect("root");
    }
    roots
}

fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The body of `GET path` over HTTPS (HTTP/1.0: the body ends with the connection).
async fn https_get(addr: SocketAddr, path: &str, roots: RootCertStore) -> std::io::Result<String> {
    let connector = tokio_rustls::TlsConnector::from(client_config(roots, &[]));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // Go's server may close without close_notify; what was read is kept.
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(head.to_string()));
    }
    Ok(body.to_string())
}
