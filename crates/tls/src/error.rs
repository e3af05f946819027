//! Why a TLS handshake did not complete, with a stable code for logs, metrics and tests.

use std::io;

/// A handshake that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate for the server name the client asked for (or none sent, and no default).
    /// Refused after reading the ClientHello, before any handshake message is sent.
    #[error("no certificate for server name {}", show(sni))]
    NoCertificate { sni: Option<String> },
    /// The handshake did not finish within `tls_handshake_timeout`. `sni` is `None` while the
    /// ClientHello had not arrived (or named no server).
    #[error("TLS handshake timed out (server name {})", show(sni))]
    Timeout { sni: Option<String> },
    /// The caller's rule refused the client for this server name (an app's access rules),
    /// after the ClientHello was read and before any handshake message was sent.
    #[error("refused before the handshake (server name {})", show(sni))]
    Refused { sni: Option<String> },
    /// `max_concurrent_handshakes` handshakes were already in progress.
    #[error("too many TLS handshakes in progress")]
    TooManyHandshakes,
    /// The peer sent something that is not a TLS ClientHello, closed the connection, offered
    /// nothing we support, or the transport failed.
    #[error("TLS handshake failed (server name {}): {source}", show(sni))]
    Handshake {
        sni: Option<String>,
        source: io::Error,
    },
}

impl TlsError {
    /// A stable machine-readable code: a metric label and a log field.
    pub fn code(&self) -> &'static str {
        match self {
            TlsError::NoCertificate { .. } => "tls_no_certificate",
            TlsError::Timeout { .. } => "tls_handshake_timeout",
            TlsError::TooManyHandshakes => "tls_too_many_handshakes",
            TlsError::Refused { .. } => "tls_refused",
            TlsError::Handshake { .. } => "tls_handshake_failed",
        }
    }

    /// Whether the client caused it (a name we do not serve, a slow or broken client), as
    /// opposed to the node being overloaded. A failed handshake is counted as the client's: a
    /// broken certificate of ours is caught when it is loaded, not here.
    pub fn is_client_fault(&self) -> bool {
        match self {
            TlsError::NoCertificate { .. } | TlsError::Timeout { .. } => true,
            TlsError::Handshake { .. } | TlsError::Refused { .. } => true,
            TlsError::TooManyHandshakes => false,
        }
    }

    /// The server name the client sent, when the ClientHello was read.
    pub fn sni(&self) -> Option<&str> {
        match self {
            TlsError::NoCertificate { sni }
            | TlsError::Timeout { sni }
            | TlsError::Refused { sni }
            | TlsError::Handshake { sni, .. } => sni.as_deref(),
            TlsError::TooManyHandshakes => None,
        }
    }
}

fn show(sni: &Option<String>) -> &str {
    sni.as_deref().unwrap_or("(none)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let sni = || Some("a.example.com".to_string());
        let cases = [
            (
                TlsError::NoCertificate { sni: sni() },
                "tls_no_certificate",
                true,
            ),
            (
                TlsError::Timeout { sni: None },
                "tls_handshake_timeout",
                true,
            ),
            (
                TlsError::TooManyHandshakes,
                "tls_too_many_handshakes",
                false,
            ),
            (
                TlsError::Handshake {
                    sni: sni(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                },
                "tls_handshake_failed",
                true,
            ),
        ];
        for (error, code, client) in cases {
            assert_eq!((error.code(), error.is_client_fault()), (code, client));
        }
        let no_cert = TlsError::NoCertificate { sni: sni() };
        assert_eq!(
            no_cert.to_string(),
            "no certificate for server name a.example.com"
        );
    }
}
