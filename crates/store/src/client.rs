//! Connecting to etcd: timeouts and HTTP/2 keep-alives so a half-dead connection is noticed
//! (PITFALLS.md, etcd), and optional TLS with a client certificate.

use anyedge_config::EtcdConfig;
use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, KvClient, TlsOptions, WatchClient,
};
use std::time::Duration;

/// Bound on opening a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one request (not on a watch or keep-alive stream).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings, and how long an answer may take. etcd (3.4+) answers pings more frequent than
/// its `--grpc-keepalive-min-time` (5 s by default) with GOAWAY ("too many pings"), and pings
/// on a connection without a stream are refused outright (no permit-without-stream): so pings
/// go every 10 s and only while a stream (the catalog's watch, a lease's keep-alive) is open.
/// A half-dead connection is then noticed within 15 s; the watch's progress notifications
/// cover the rest (PITFALLS.md, etcd).
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));

/// The largest gRPC message taken from etcd. tonic's default (4 MiB) made a listing of about
/// 9,000 apps fail ("decoded message length too large") and a node retry forever; listings are
/// now paged ([`crate::pages`]), a page is far below this, and one still too large is asked for
/// again smaller. Watch responses are asked for in fragments (etcd splits one above its
/// `--max-request-bytes`, 1.5 MiB by default), so they stay below it too. Large enough for any
/// one value etcd accepts; small enough that a runaway response cannot take a node's memory.
pub const MAX_MESSAGE: usize = 16 << 20;

/// The key-value client of `client`, taking messages up to [`MAX_MESSAGE`].
pub fn kv(client: &Client) -> KvClient {
    client.kv_client().max_decoding_message_size(MAX_MESSAGE)
}

/// The watch client of `client`, taking messages up to [`MAX_MESSAGE`].
pub fn watcher(client: &Client) -> WatchClient {
    client.watch_client().max_decoding_message_size(MAX_MESSAGE)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("etcd ({endpoints}): {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
}

/// Connect to `cfg`'s endpoints (any one that answers).
pub async fn connect(cfg: &EtcdConfig) -> Result<Client, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
        .with_keep_alive_while_idle(false)
        .with_tcp_keepalive(Duration::from_secs(10));
    if cfg.ca.is_some() || cfg.cert.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cfg.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read("etcd_ca", ca)?));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
            tls = tls.identity(Identity::from_pem(
                read("etcd_cert", cert)?,
                read("etcd_key", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    Client::connect(&cfg.endpoints, Some(options))
        .await
        .map_err(|source| StoreError::Etcd {
            endpoints: cfg.endpoints.join(","),
            source,
        })
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// A plain config for a list of endpoints (the CLI's `--etcd`).
pub fn plain(endpoints: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: endpoints.split(',').map(|e| e.trim().to_string()).collect(),
        ca: None,
        cert: None,
        key: None,
        secret_key_file: None,
    }
}

/// An etcd error with the endpoints it came from.
pub fn etcd_error(cfg: &EtcdConfig) -> impl Fn(etcd_client::Error) -> StoreError + '_ {
    move |source| StoreError::Etcd {
        endpoints: cfg.endpoints.join(","),
        source,
    }
}
