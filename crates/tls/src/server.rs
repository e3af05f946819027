//! Server configs built once per snapshot over session state shared for the whole process, and
//! the handshake: ClientHello first, then the config that fits it, all under one deadline.

use crate::acme::Challenges;
use crate::certs::normalize_name;
use crate::error::TlsError;
use crate::resolver::SniResolver;
use crate::tickets::Tickets;
use rustls::server::{
    Acceptor, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::server::{NoServerSessionStorage, WantsServerCert};
use rustls::{ConfigBuilder, ServerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// TLS-ALPN-01 (RFC 8737): a validation connection offers this protocol alone.
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// How many TLS sessions the server-side cache keeps (TLS 1.2 session ids; TLS 1.3 uses tickets).
const SESSION_CACHE_SIZE: usize = 16_384;

/// TLS state that lives as long as the process, so that sessions resume across config reloads:
/// the session cache, the ticket keys (rotated every 6 hours, and handed to the process taking
/// over at an upgrade: [`crate::tickets`]) and the validated protocol versions.
#[derive(Clone)]
pub struct TlsShared {
    builder: ConfigBuilder<ServerConfig, WantsServerCert>,
    session_storage: Arc<dyn StoresServerSessions>,
    tickets: Arc<Tickets>,
}

impl std::fmt::Debug for TlsShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsShared").finish_non_exhaustive()
    }
}

impl TlsShared {
    /// Fails only if the system random number generator does (ticket keys need it).
    pub fn new() -> Result<TlsShared, rustls::Error> {
        let builder = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth();
        Ok(TlsShared {
            builder,
            session_storage: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            tickets: Arc::new(Tickets::new()?),
        })
    }

    /// The ticket keys, for the process taking over.
    pub fn export_ticket_keys(&self) -> Vec<u8> {
        self.tickets.export()
    }

    /// Use the ticket keys of the process this one takes over from; false if they do not read.
    pub fn import_ticket_keys(&self, bytes: &[u8]) -> bool {
        self.tickets.import(bytes)
    }

    /// A config over the shared session state that resolves certificates with `resolver`.
    fn config(&self, resolver: Arc<dyn ResolvesServerCert>, alpn: &[&[u8]]) -> ServerConfig {
        let mut config = self.builder.clone().with_cert_resolver(resolver);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.session_storage = self.session_storage.clone();
        config.ticketer = self.tickets.clone();
        config
    }
}

/// Bounds on handshakes, for the whole node (share one across snapshots: the permits count
/// handshakes in progress).
///
/// When every permit is taken, a new connection fails at once with
/// [`TlsError::TooManyHandshakes`] rather than queueing: under a handshake flood the CPU is the
/// bottleneck, and a queue would only hold descriptors until its entries time out.
#[derive(Debug, Clone)]
pub struct HandshakeLimits {
    /// For the whole handshake, from the first byte awaited to the last sent.
    pub timeout: Duration,
    pub permits: Arc<Semaphore>,
}

impl HandshakeLimits {
    pub fn new(timeout: Duration, max_concurrent: usize) -> Self {
        HandshakeLimits {
            timeout,
            permits: Arc::new(Semaphore::new(max_concurrent.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// From `[limits] tls_handshake_timeout` and `max_concurrent_handshakes`.
    pub fn from_config(limits: &anyedge_config::Limits) -> Self {
        Self::new(
            limits.tls_handshake_timeout,
            limits.max_concurrent_handshakes,
        )
    }
}

/// A completed handshake.
#[derive(Debug)]
pub struct Accepted<IO> {
    pub stream: TlsStream<IO>,
    /// The server name the client sent, lower-cased, without a trailing dot.
    pub sni: Option<String>,
    /// The negotiated application protocol: `h2`, `http/1.1`, `acme-tls/1`, or none offered.
    pub alpn: Option<Vec<u8>>,
}

/// The TLS side of one catalog snapshot: prebuilt configs over the process's shared state.
#[derive(Debug)]
pub struct TlsServer {
    resolver: Arc<SniResolver>,
    /// ALPN `h2`, `http/1.1`; TLS 1.2 and 1.3; no client certificates.
    config: Arc<ServerConfig>,
    /// ALPN exactly `acme-tls/1`, for TLS-ALPN-01 validation connections, with the pending
    /// challenges it answers; `None` without ACME.
    acme: Option<(Arc<ServerConfig>, Arc<Challenges>)>,
}

impl TlsServer {
    pub fn new(resolver: Arc<SniResolver>, shared: &TlsShared) -> TlsServer {
        let config = shared.config(resolver.clone(), &[ALPN_H2, ALPN_HTTP11]);
        TlsServer {
            resolver,
            config: Arc::new(config),
            acme: None,
        }
    }

    /// Answer TLS-ALPN-01 validation connections (those offering `acme-tls/1`) with the
    /// challenge certificates of `challenges`. The edge closes such a connection after the
    /// handshake.
    pub fn with_acme(mut self, challenges: Arc<Challenges>, shared: &TlsShared) -> Self {
        let mut config = shared.config(challenges.clone(), &[ALPN_ACME_TLS]);
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        self.acme = Some((Arc::new(config), challenges));
        self
    }

    pub fn resolver(&self) -> &Arc<SniResolver> {
        &self.resolver
    }

    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Run the server side of a handshake on `io`: take a handshake permit (or fail at once),
    /// read the ClientHello, refuse a server name without a certificate before answering, then
    /// complete the handshake, the whole within `limits.timeout`.
    pub async fn accept<IO>(
        &self,
        io: IO,
        limits: &HandshakeLimits,
    ) -> Result<Accepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_filtered(io, limits, |_| true).await
    }

    /// [`Self::accept`], with `admit` asked once the ClientHello's server name is known and
    /// before any handshake work: `false` closes the connection (`TlsError::Refused`). An
    /// app's access rules refuse a client here, at the cost of reading one record.
    pub async fn accept_filtered<IO>(
        &self,
        io: IO,
        limits: &HandshakeLimits,
        admit: impl FnOnce(Option<&str>) -> bool,
    ) -> Result<Accepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let _permit = limits
            .permits
            .try_acquire()
            .map_err(|_| TlsError::TooManyHandshakes)?;
        let deadline = Instant::now() + limits.timeout;
        let acceptor = LazyConfigAcceptor::new(Acceptor::default(), io);
        let start = match timeout_at(deadline, acceptor).await {
            Err(_) => return Err(TlsError::Timeout { sni: None }),
            Ok(Err(source)) => return Err(TlsError::Handshake { sni: None, source }),
            Ok(Ok(start)) => start,
        };
        let hello = start.client_hello();
        let sni = hello.server_name().map(normalize_name);
        let offers_acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ALPN_ACME_TLS));
        tracing::trace!(sni, offers_acme, "ClientHello read");
        if !admit(sni.as_deref()) {
            return Err(TlsError::Refused { sni });
        }
        let Some(config) = self.config_for(sni.as_deref(), offers_acme) else {
            refuse(start.io, sni.is_some(), deadline).await;
            return Err(TlsError::NoCertificate { sni });
        };
        match timeout_at(deadline, start.into_stream(config)).await {
            Err(_) => Err(TlsError::Timeout { sni }),
            Ok(Err(source)) => Err(TlsError::Handshake { sni, source }),
            Ok(Ok(stream)) => {
                let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                Ok(Accepted { stream, sni, alpn })
            }
        }
    }

    /// The config for a ClientHello, or `None` when no certificate would answer it.
    /// A ClientHello offering `acme-tls/1` for a name with a pending challenge gets the
    /// challenge config (its only protocol is `acme-tls/1`); any other gets the usual one.
    fn config_for(&self, sni: Option<&str>, offers_acme: bool) -> Option<Arc<ServerConfig>> {
        if let (true, Some(name), Some((acme, challenges))) = (offers_acme, sni, &self.acme) {
            if challenges.is_pending(name) {
                return Some(acme.clone());
            }
        }
        self.resolver.lookup(sni).map(|_| self.config.clone())
    }
}

/// A fatal alert in a plaintext TLS record: `unrecognized_name` (RFC 6066) for a name we do not
/// serve, `handshake_failure` when no name was sent. A client then reports why, not a bare EOF.
fn alert_record(description: u8) -> [u8; 7] {
    // content type alert (21), legacy version TLS 1.2, length 2, level fatal (2), description.
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

const UNRECOGNIZED_NAME: u8 = 112;
const HANDSHAKE_FAILURE: u8 = 40;

/// Send the alert and close, within the handshake's deadline. Errors are of no interest: the
/// connection is being refused anyway.
async fn refuse<IO: AsyncWrite + Unpin>(mut io: IO, named: bool, deadline: Instant) {
    let alert = alert_record(match named {
        true => UNRECOGNIZED_NAME,
        false => HANDSHAKE_FAILURE,
    });
    let _ = timeout_at(deadline, async {
        io.write_all(&alert).await?;
        io.shutdown().await
    })
    .await;
}
