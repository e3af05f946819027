//! Mutual TLS between nodes, every identity from the cluster CA: a worker's backhaul listener
//! accepts only clients with a certificate from the CA, and an edge trusts only servers with one.
//!
//! Choices: TLS 1.3 only (both ends are ours); the ring provider, passed explicitly rather than
//! relying on a process default; configs are built once in [`ClusterTls::from_pem`] and shared,
//! so session resumption works across connections.

use crate::{ALPN_H2, ALPN_TCP};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// Mutual TLS between nodes, all from the cluster CA.
#[derive(Clone)]
pub struct ClusterTls {
    inner: Arc<Inner>,
}

struct Inner {
    server: Arc<ServerConfig>,
    client_h2: Arc<ClientConfig>,
    client_tcp: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("alpn", &self.inner.server.alpn_protocols)
            .finish_non_exhaustive()
    }
}

/// The cluster CA, this node's certificate or its key cannot be used. `file` is the path given
/// to [`ClusterTls::load`], or "CA PEM", "certificate PEM", "key PEM" for
/// [`ClusterTls::from_pem`].
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not valid PEM: {source}")]
    Pem { file: String, source: pem::Error },
    #[error("{file}: no certificate in it")]
    NoCertificate { file: String },
    #[error("{file}: no private key in it")]
    NoKey { file: String },
    #[error("{file}: not a usable CA certificate: {source}")]
    BadCa { file: String, source: rustls::Error },
    #[error("{file}: the certificate and key cannot be used together: {source}")]
    BadCertificate { file: String, source: rustls::Error },
    #[error("the client certificate verifier cannot be built: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl ClusterTls {
    pub fn from_pem(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<ClusterTls, TlsError> {
        Self::build(
            (ca_pem, "CA PEM"),
            (cert_pem, "certificate PEM"),
            (key_pem, "key PEM"),
        )
    }

    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<ClusterTls, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                file: path.display().to_string(),
                source,
            })
        };
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        let (ca_name, cert_name, key_name) = (
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        );
        Self::build(
            (&ca_pem, &ca_name),
            (&cert_pem, &cert_name),
            (&key_pem, &key_name),
        )
    }

    fn build(
        ca: (&[u8], &str),
        cert: (&[u8], &str),
        key: (&[u8], &str),
    ) -> Result<ClusterTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cas = certificates(ca.0, ca.1)?;
        let mut roots = RootCertStore::empty();
        for der in cas {
            roots.add(der).map_err(|source| TlsError::BadCa {
                file: ca.1.to_owned(),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let chain = certificates(cert.0, cert.1)?;
        let private = PrivateKeyDer::from_pem_slice(key.0).map_err(|e| match e {
            pem::Error::NoItemsFound => TlsError::NoKey {
                file: key.1.to_owned(),
            },
            source => TlsError::Pem {
                file: key.1.to_owned(),
                source,
            },
        })?;
        let bad_cert = |source| TlsError::BadCertificate {
            file: cert.1.to_owned(),
            source,
        };

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad_cert)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(bad_cert)?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_TCP.to_vec()];

        let client = |alpn: &[u8]| client_config(&provider, &roots, &chain, &private, alpn);
        let client_h2 = client(ALPN_H2).map_err(bad_cert)?;
        let client_tcp = client(ALPN_TCP).map_err(bad_cert)?;
        Ok(ClusterTls {
            inner: Arc::new(Inner {
                server: Arc::new(server),
                client_h2,
                client_tcp,
            }),
        })
    }

    /// Server side of a worker's `backhaul_listen`: requires a client certificate chaining to
    /// the cluster CA (anything else fails the handshake), offers ALPN [`ALPN_H2`],
    /// [`ALPN_TCP`].
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.server.clone()
    }

    /// Client side: trusts only the cluster CA, presents this node's certificate, offers the
    /// one ALPN given. [`ALPN_H2`] and [`ALPN_TCP`] get the configs built in `from_pem`
    /// (shared, so sessions resume); any other ALPN gets a copy with that ALPN each call.
    pub fn client_config(&self, alpn: &[u8]) -> Arc<ClientConfig> {
        if alpn == ALPN_H2 {
            return self.inner.client_h2.clone();
        }
        if alpn == ALPN_TCP {
            return self.inner.client_tcp.clone();
        }
        let mut config = (*self.inner.client_h2).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.to_vec(), key.clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

fn certificates(pem_bytes: &[u8], file: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            file: file.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_owned(),
        });
    }
    Ok(certs)
}

/// The node id a peer's certificate names (its CN, else its first DNS SAN), for logs. `None`
/// before the handshake, without a peer certificate, or if it cannot be parsed.
pub fn peer_node_id(conn: &CommonState) -> Option<String> {
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })
}
