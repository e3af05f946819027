//! Building blocks of node-to-node backhaul: mutual TLS from the cluster CA ([`tls`]), the
//! kernel's RTT of a backhaul socket ([`rtt`]), and every wire format nodes exchange, each
//! pure code with its grammar in its module docs, unit tests and a fuzz target (`fuzz/`):
//!
//! - [`header`]: the header and reply that open a raw-TCP backhaul connection (below);
//! - [`stream`]: the metadata header of an HTTP/2 backhaul stream (target app and instance,
//!   the client), and the names of the feed and retry headers;
//! - [`retry`]: why a worker did not give a request to its instance, on both ends;
//! - [`feed`]: the load feed's lines and frames, with an incremental reader.
//!
//! The edge and worker code that uses them lives elsewhere.
//!
//! One `backhaul_listen` port serves both kinds of backhaul connection, told apart by ALPN:
//! [`ALPN_H2`] carries HTTP requests as HTTP/2 streams, [`ALPN_TCP`] carries one raw TCP
//! connection.
//!
//! # TCP backhaul header
//!
//! Right after the TLS handshake of an [`ALPN_TCP`] connection the edge sends one header
//! ([`header::TcpHeader`]), all integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `AEBH` |
//! | 1 | version, `1` |
//! | 1 + n | app name: length n (1..=255), then n bytes of UTF-8, no control characters, no `/` |
//! | 1 + n | instance name: same rule |
//! | 1 + 4 or 1 + 16 | client address: family `4` or `6`, then the address bytes |
//! | 2 | client port |
//! | 2 | edge port (the port the client connected to) |
//!
//! An encoded header is at most 538 bytes ([`header::MAX_HEADER_LEN`] is 600). An IPv6 client
//! address carries neither flow info nor scope id: both decode as 0.
//!
//! The worker answers with two bytes ([`header::TcpReply`]) before it reads any client byte:
//! `[0, 0]` connected (the client's bytes flow next, both ways), or `[1, code]` refused, where
//! the code is one of [`header::RefuseReason`] (1 `unknown_instance`, 2 `wrong_app`,
//! 3 `unhealthy`, 4 `full`, 5 `app_overloaded`, 6 `connect_failed`, 7 `bad_header`,
//! 8 `draining`, 9 `no_service`). Any other pair of bytes is an error
//! ([`header::HeaderError::BadReply`]), so a newer worker's reason is not silently misread.

pub mod feed;
#[doc(hidden)]
pub mod fuzz;
pub mod header;
pub mod retry;
pub mod rtt;
pub mod stream;
pub mod tls;

/// ALPN of a backhaul connection carrying HTTP/2 streams.
pub const ALPN_H2: &[u8] = b"anyedge-h2";
/// ALPN of a backhaul connection carrying one raw TCP connection.
pub const ALPN_TCP: &[u8] = b"anyedge-tcp";

/// HTTP/2 receive windows on backhaul, the same on both ends (fixed, not adaptive): a stream may
/// have 2 MiB in flight (about 160 Mbit/s at 100 ms RTT), a connection sixteen streams' worth, so
/// data one stalled client or instance has not taken never stalls the connection's other streams.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;
