//! Test support: a throwaway CA issuing certificates into a temporary directory, configs that
//! name them, rustls clients that trust the CA, and a handshake over an in-memory pipe.

use anyedge_config::Config;
use anyedge_tls::rustls::pki_types::{CertificateDer, ServerName};
use anyedge_tls::rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use anyedge_tls::{Accepted, CertStore, DynamicCerts, HandshakeLimits, SniResolver};
use anyedge_tls::{TlsError, TlsServer, TlsShared};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa};
use rcgen::{KeyPair, KeyUsagePurpose};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio_rustls::client::TlsStream as ClientStream;
use tokio_rustls::TlsConnector;

pub use anyedge_tls::rustls::version::{TLS12, TLS13};

/// A CA and the directory its certificates are written to.
pub struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    pub dir: tempfile::TempDir,
}

/// A certificate issued by [`Pki::issue`].
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "anyedge-tls test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            ca,
            ca_key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Issue a certificate for `names`, expiring at the start of `not_after` (year, month, day),
    /// written to `<file>.pem` and `<file>-key.pem`.
    pub fn issue_until(&self, file: &str, names: &[&str], not_after: (i32, u8, u8)) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let leaf = Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(self.path(&format!("{file}.pem")), &leaf.cert_pem).unwrap();
        std::fs::write(self.path(&format!("{file}-key.pem")), &leaf.key_pem).unwrap();
        leaf
    }

    pub fn issue(&self, file: &str, names: &[&str]) -> Leaf {
        self.issue_until(file, names, (2040, 1, 1))
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Roots for clients: this CA, and the CA of the committed fixtures.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let fixtures_ca = std::fs::read(fixtures().join("ca.pem")).unwrap();
        let fixtures_ca = CertificateDer::pem_slice_iter(&fixtures_ca).next().unwrap();
        roots.add(fixtures_ca.unwrap()).unwrap();
        Arc::new(roots)
    }

    pub fn client(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        client_config(self.roots(), versions, alpn)
    }
}

use anyedge_tls::rustls::pki_types::pem::PemObject;

/// The committed key-format fixtures (`tests/data/make.sh`).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// One `[[apps]]` block with its certificates (file stems: `<stem>.pem`, `<stem>-key.pem`).
pub fn app(name: &str, hostnames: &[&str], cert_stems: &[&str]) -> String {
    let hostnames: Vec<String> = hostnames.iter().map(|h| format!("{h:?}")).collect();
    let mut toml = format!(
        "[[apps]]\nname = {name:?}\nhostnames = [{}]\n",
        hostnames.join(", ")
    );
    for stem in cert_stems {
        toml += &format!(
            "\n  [[apps.certificates]]\n  cert = \"{stem}.pem\"\n  key = \"{stem}-key.pem\"\n"
        );
    }
    toml + "\n"
}

/// `toml` parsed as a config file in `dir`, so that certificate paths resolve there.
pub fn config(dir: &Path, toml: &str) -> Config {
    match anyedge_config::parse_with_base(toml, "test.toml", Some(dir)) {
        Ok(config) => config,
        Err(d) => panic!("invalid test config:\n{d}\n{toml}"),
    }
}

/// The certificates of `config` loaded into a resolver, which must load without errors.
pub fn resolver(config: &Config, dynamic: Arc<DynamicCerts>) -> SniResolver {
    let (store, errors) = CertStore::load(config);
    assert!(errors.is_empty(), "{errors:?}");
    SniResolver::new(Arc::new(store), dynamic)
}

pub fn server(config: &Config) -> TlsServer {
    let shared = TlsShared::new().unwrap();
    TlsServer::new(Arc::new(resolver(config, Arc::default())), &shared)
}

pub fn limits() -> HandshakeLimits {
    HandshakeLimits::new(Duration::from_secs(10), 16)
}

pub fn client_config(
    roots: Arc<RootCertStore>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let provider = Arc::new(anyedge_tls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub type ServerSide = Result<Accepted<DuplexStream>, TlsError>;
pub type ClientSide = io::Result<ClientStream<DuplexStream>>;

/// A handshake between `server` and a client asking for `name` (a DNS name, or an IP address:
/// then the client sends no server name), run side by side over an in-memory pipe.
pub async fn handshake(
    server: &TlsServer,
    limits: &HandshakeLimits,
    client: Arc<ClientConfig>,
    name: &str,
) -> (ServerSide, ClientSide) {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let name = ServerName::try_from(name.to_string()).unwrap();
    let connect = TlsConnector::from(client).connect(name, client_io);
    tokio::join!(server.accept(server_io, limits), connect)
}

/// The certificate the client was shown.
pub fn peer_cert(client: &ClientStream<DuplexStream>) -> CertificateDer<'static> {
    client.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The rustls error inside a client's I/O error, as a string (`AlertReceived(UnrecognisedName)`).
pub fn client_error(result: ClientSide) -> String {
    let error = result.expect_err("the client handshake should fail");
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<anyedge_tls::rustls::Error>())
    {
        Some(tls) => format!("{tls:?}"),
        None => format!("{error:?}"),
    }
}

/// A client that accepts any server certificate, as an ACME validator does with a TLS-ALPN-01
/// challenge certificate (self-signed, with a critical extension webpki does not know).
pub fn validator_client(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = Arc::new(anyedge_tls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCert(Arc<anyedge_tls::rustls::crypto::CryptoProvider>);

mod any_cert {
    use anyedge_tls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use anyedge_tls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use anyedge_tls::rustls::{DigitallySignedStruct, Error, SignatureScheme};

    impl ServerCertVerifier for super::AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        // webpki refuses to parse a certificate with an unknown critical extension (the
        // challenge's acmeIdentifier), so the signature is taken on trust too.
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
