//! Tests of the TLS crate: real handshakes between a rustls client and `TlsServer::accept` over
//! in-memory pipes, with certificates made by rcgen (and fixtures for the key formats rcgen
//! cannot write) and loaded through a parsed config.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod tls {
    pub mod support;

    mod handshake;
    mod loading;
    mod resumption;
    mod sni;
}
