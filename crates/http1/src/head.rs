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

/// The field lines of a head, in order. Their list comes from a per-thread pool and goes back
/// to it when the head is dropped, so a head costs no allocation once a thread has served a few.
/// (They were an inline array of [`MAX_FIELDS`]: 2 KB cleared per parse and copied on every
/// move of a head, 7,000 instructions per proxied request in memcpy and memset by callgrind;
/// then one allocation of exactly their number per head.)
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Fields {
    items: Vec<Field>,
}

/// Field lists kept per thread: enough for the heads that are alive at once on a busy thread
/// (a request's and its response's per exchange in flight).
const POOLED_LISTS: usize = 512;
/// The capacity of a pooled list: a head's usual number of fields fits, a larger one gets a list
/// of its own that is freed, not pooled.
const POOLED_CAPACITY: usize = 32;

thread_local! {
    static LISTS: std::cell::RefCell<Vec<Vec<Field>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Clone for Fields {
    fn clone(&self) -> Fields {
        let mut copy = Fields::with_capacity(self.items.len());
        copy.items.extend_from_slice(&self.items);
        copy
    }
}

impl Drop for Fields {
    fn drop(&mut self) {
        if self.items.capacity() != POOLED_CAPACITY {
            return;
        }
        let mut items = std::mem::take(&mut self.items);
        items.clear();
        // `try_with`: a head dropped while its thread's locals are torn down is just freed.
        let _ = LISTS.try_with(|lists| {
            if let Ok(mut lists) = lists.try_borrow_mut() {
                if lists.len() < POOLED_LISTS {
                    lists.push(items);
                }
            }
        });
    }
}

impl Fields {
    /// The fields, in the order received.
    pub fn as_slice(&self) -> &[Field] {
        &self.items
    }

    /// Room for `n` fields: a pooled list when they fit in one.
    pub(crate) fn with_capacity(n: usize) -> Fields {
        if n > POOLED_CAPACITY {
            return Fields {
                items: Vec::with_capacity(n),
            };
        }
        let pooled = LISTS
            .try_with(|lists| lists.try_borrow_mut().ok().and_then(|mut l| l.pop()))
            .ok()
            .flatten();
        Fields {
            items: pooled.unwrap_or_else(|| Vec::with_capacity(POOLED_CAPACITY)),
        }
    }

    /// Appends one; the caller has checked the count against [`MAX_FIELDS`].
    pub(crate) fn push(&mut self, field: Field) {
        if self.items.len() < MAX_FIELDS {
            self.items.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field() -> Field {
        Field {
            name: Span { start: 0, end: 1 },
            value: Span { start: 2, end: 3 },
            class: Class::Other,
        }
    }

    #[test]
    fn a_dropped_list_is_used_again_and_a_large_one_is_not_kept() {
        let mut first = Fields::with_capacity(3);
        first.push(field());
        let at = first.items.as_ptr();
        let copy = first.clone();
        assert_eq!(copy.as_slice(), first.as_slice());
        drop(first);
        let second = Fields::with_capacity(5);
        assert_eq!(
            second.items.as_ptr(),
            at,
            "the list came back from the pool"
        );
        assert!(
            second.as_slice().is_empty(),
            "a pooled list comes back empty"
        );
        let large = Fields::with_capacity(POOLED_CAPACITY + 1);
        assert_eq!(large.items.capacity(), POOLED_CAPACITY + 1);
        let mut grown = Fields::with_capacity(1);
        for _ in 0..MAX_FIELDS + 5 {
            grown.push(field());
        }
        assert_eq!(
            grown.as_slice().len(),
            MAX_FIELDS,
            "never more than the limit"
        );
        drop(grown);
        drop(large);
        let again = Fields::with_capacity(1);
        assert_eq!(again.items.capacity(), POOLED_CAPACITY);
    }
}
