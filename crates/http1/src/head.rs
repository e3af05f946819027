//! The parsed shapes shared by request and response heads: positions into the caller's buffer,
//! the per-field classification, the well-known fields' facts, and the message's framing.

use std::ops::Range;

/// The most fields a head can hold ([`Limits::max_fields`] is capped to it).
pub const MAX_FIELDS: usize = 100;

/// A byte range of the caller's buffer (a head is far below 4 GiB, so `u32` offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The range as `usize`s.
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The bytes of `buf` this span covers (empty if `buf` is not the parsed buffer and too short).
    pub fn of(self, buf: &[u8]) -> &[u8] {
        buf.get(self.range()).unwrap_or_default()
    }

    /// Whether the span covers nothing.
    pub fn is_empty(self) -> bool {
        self.start >= self.end
    }

    /// The span of `part`, a subslice of `base`.
    pub(crate) fn within(base: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
}

/// HTTP/1.0 or HTTP/1.1 (httparse refuses every other version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http10,
    Http11,
}

/// A complete head, or not enough bytes yet: read more and parse the whole buffer again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T> {
    Complete(T),
    Partial,
}

/// How the message body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Exactly this many bytes follow the head (`Length(0)`: an empty body, declared).
    Length(u64),
    /// Chunked transfer coding: feed the bytes after the head to a `ChunkedDecoder`.
    Chunked,
    /// No body at all.
    None,
    /// Responses only: the body runs until the instance closes the connection.
    UntilClose,
}

/// Bounds applied while parsing a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The request line, CRLF included, in bytes (longer: 414).
    pub max_request_line: usize,
    /// The whole head, start line and final empty line included, in bytes (larger: 431).
    pub max_head: usize,
    /// Field lines (more: 431); at most [`MAX_FIELDS`].
    pub max_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head: 16 * 1024,
            max_fields: MAX_FIELDS,
        }
    }
}

/// What a field is, decided once from its name while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Class {
    #[default]
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    Te,
    Trailer,
    KeepAlive,
    ProxyConnection,
}

impl Class {
    /// Fields that describe one connection only and are never forwarded as received
    /// (RFC 9110 section 7.6.1, plus `Proxy-Connection`); `Content-Length` is re-emitted from
    /// the framing instead and is not counted here.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Class::Connection
                | Class::KeepAlive
                | Class::ProxyConnection
                | Class::Te
                | Class::TransferEncoding
                | Class::Upgrade
        )
    }
}

/// One field line: where its name and value are (value without surrounding whitespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Field {
    pub name: Span,
    pub value: Span,
    pub class: Class,
}

/// The `Connection` options present, over every `Connection` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Some other token, naming a field to remove before forwarding.
    pub names_fields: bool,
}

/// The `Transfer-Encoding` codings, over every `Transfer-Encoding` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TransferCodings {
    /// Codings listed (all fields together).
    pub count: u32,
    /// How many of them are `chunked`.
    pub chunked: u32,
    /// Whether the final one is `chunked`.
    pub chunked_last: bool,
}

/// What `Expect` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Expect {
    #[default]
    Nothing,
    Continue,
    /// Some expectation other than `100-continue` (a server may answer 417).
    Other,
}

/// The well-known fields' facts, classified once while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Known {
    /// The value of the one `Host` field.
    pub host: Option<Span>,
    /// The agreed `Content-Length`; `None` when absent or dropped because `Transfer-Encoding`
    /// is present.
    pub content_length: Option<u64>,
    /// `None` when no `Transfer-Encoding` field is present.
    pub transfer_encoding: Option<TransferCodings>,
    pub connection: ConnectionOptions,
    /// The value of the first `Upgrade` field.
    pub upgrade: Option<Span>,
    pub expect: Expect,
    /// `TE` lists `trailers`.
    pub te_trailers: bool,
    pub trailer: bool,
    pub keep_alive: bool,
    pub proxy_connection: bool,
}

/// The field lines of a head, in order: one allocation of exactly their number. (They were an
/// inline array of [`MAX_FIELDS`]: 2 KB cleared per parse and copied on every move of a head,
/// 7,000 instructions per proxied request in memcpy and memset by callgrind.)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields {
    items: Vec<Field>,
}

impl Fields {
    /// The fields, in the order received.
    pub fn as_slice(&self) -> &[Field] {
        &self.items
    }

    /// Room for `n` fields.
    pub(crate) fn with_capacity(n: usize) -> Fields {
        Fields {
            items: Vec::with_capacity(n),
        }
    }

    /// Appends one; the caller has checked the count against [`MAX_FIELDS`].
    pub(crate) fn push(&mut self, field: Field) {
        if self.items.len() < MAX_FIELDS {
            self.items.push(field);
        }
    }
}
