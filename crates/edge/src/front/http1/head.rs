//! A request head read by our HTTP/1.1 server: parsed strictly by `anyedge-http1` into
//! positions, then turned into the request the forwarding core takes. What the connection
//! itself needs (framing, keep-alive, `100-continue`, a protocol switch) is kept beside it.
//! The parsed head (about 2 KiB of positions) lives only in this synchronous step, never in a
//! connection's state.

use crate::instance::http1::RawRequest;
use anyedge_http1::{Class, Error, Framing, Limits, RequestHead, Status, Version};
use anyedge_telemetry::ErrorCode;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};

/// What the connection needs to know about a request, beside the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Facts {
    /// Bytes of the head in the read buffer.
    pub len: usize,
    pub body: Body,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field (HTTP/1.1).
    pub upgrade: bool,
    /// A `HEAD` request: its response has no body whatever its fields say.
    pub head: bool,
    pub http10: bool,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A head refused before routing: the status, the code it is counted under, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rejection {
    pub status: u16,
    pub code: ErrorCode,
    pub why: &'static str,
}

impl From<Error> for Rejection {
    fn from(e: Error) -> Rejection {
        let status = e.status();
        Rejection {
            status,
            code: match status {
                431 => ErrorCode::HeadersTooLarge,
                _ => ErrorCode::BadRequest,
            },
            why: e.code(),
        }
    }
}

fn bad(why: &'static str) -> Rejection {
    Rejection {
        status: 400,
        code: ErrorCode::BadRequest,
        why,
    }
}

/// The request at the start of `buf`, or `None` when more bytes are needed. A plain request
/// (see [`plain`]) comes with its head kept as received and no `HeaderMap` (until the proxy's
/// own prefix, known once the request is routed, is checked: [`RawRequest::prefixed`]).
pub(super) fn parse(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, Rejection> {
    let head = match RequestHead::parse(buf, limits)? {
        Status::Complete(h) => h,
        Status::Partial => return Ok(None),
    };
    let facts = facts(buf, &head);
    if !plain(buf, &head) {
        return Ok(Some((request(buf, &head)?, facts, None)));
    }
    let req = start_plain(buf, &head)?;
    let mut bytes = crate::instance::buffers::write_buffer();
    bytes.extend_from_slice(&buf[..head.len]);
    let raw = RawRequest {
        bytes,
        target: head.target,
        host: head.known.host,
        content_length: head.known.content_length,
        te_trailers: head.known.te_trailers,
        edge: None,
        fields: head.fields,
    };
    Ok(Some((req, facts, Some(raw))))
}

/// A request, what the connection needs to know about it, and its head as received when it is
/// plain.
pub(super) type Parsed = (Request<()>, Facts, Option<RawRequest>);

/// Whether the head's fields can go to the instance as received, written by our HTTP/1.1
/// client, with no `HeaderMap`: nothing in it that the forwarding core reads or edits by name
/// (fields that `Connection` names; a protocol switch; an absolute-form target's authority;
/// CONNECT). The proxy's prefixed fields (placement wishes, debug, spoofed proxy-only ones)
/// are checked once the request is routed, against the current prefix.
///
/// Its target is written to the instance as received and made a `Uri` only on the general
/// way, so it must be one that `Uri` keeps as it is: an origin form of common bytes (no
/// fragment, nothing `Uri` refuses or escapes); any other goes the general way.
fn plain(buf: &[u8], head: &RequestHead) -> bool {
    let known = &head.known;
    !known.connection.names_fields
        && known.upgrade.is_none()
        && head.authority.is_none()
        && !head.method_is(buf, b"CONNECT")
        && kept_target(head.target.of(buf))
}

/// An origin-form target of bytes that every part of a `Uri` takes unchanged: `/` first, then
/// letters, digits and `!$%&'()*+,-./:;=?@_~`, at most 8 KiB.
fn kept_target(target: &[u8]) -> bool {
    target.first() == Some(&b'/')
        && target.len() <= 8 * 1024
        && target.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'$'..=b'/' | b':' | b';' | b'=' | b'?' | b'@' | b'_' | b'~'
                )
        })
}

/// The request line of a plain request (its head is kept as received, in a pooled buffer) as
/// a request with no fields and `/` for its `Uri`: the target stays in the kept head
/// ([`RawRequest::target`]), so nothing is allocated for it (a `Uri` sharing the head's bytes
/// was two allocations: the copy and the count its sharing needs).
fn start_plain(buf: &[u8], head: &RequestHead) -> Result<Request<()>, Rejection> {
    let method = Method::from_bytes(head.method.of(buf)).map_err(|_| bad("method"))?;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.version_mut() = match head.version {
        Version::Http10 => http::Version::HTTP_10,
        Version::Http11 => http::Version::HTTP_11,
    };
    Ok(req)
}

/// The request line as a request with no fields, and the head's bytes it shares.
fn start(buf: &[u8], head: &RequestHead) -> Result<(Request<()>, bytes::Bytes), Rejection> {
    let method = Method::from_bytes(head.method.of(buf)).map_err(|_| bad("method"))?;
    // One copy of the head, shared by the target and every value (a copy each was an
    // allocation each).
    let shared = bytes::Bytes::copy_from_slice(&buf[..head.len]);
    let uri =
        Uri::from_maybe_shared(shared.slice(head.target.range())).map_err(|_| bad("target"))?;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = match head.version {
        Version::Http10 => http::Version::HTTP_10,
        Version::Http11 => http::Version::HTTP_11,
    };
    Ok((req, shared))
}

fn facts(buf: &[u8], head: &RequestHead) -> Facts {
    let known = &head.known;
    Facts {
        len: head.len,
        body: match head.framing {
            Framing::Length(0) | Framing::None | Framing::UntilClose => Body::None,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked,
        },
        keep_alive: head.keep_alive(),
        expect_continue: known.expect == anyedge_http1::Expect::Continue
            && head.version == Version::Http11,
        upgrade: head.version == Version::Http11
            && known.connection.upgrade
            && known.upgrade.is_some(),
        head: head.method_is(buf, b"HEAD"),
        http10: head.version == Version::Http10,
    }
}

/// The request the forwarding core takes. `Content-Length` beside `Transfer-Encoding` is left
/// out (the coding wins, RFC 9112 6.3), a repeated identical one too; everything else goes in
/// as received, in order.
fn request(buf: &[u8], head: &RequestHead) -> Result<Request<()>, Rejection> {
    let (mut req, shared) = start(buf, head)?;
    // Without a coding, identical `Content-Length` fields go on as one.
    let mut drop_length = head.known.transfer_encoding.is_some();
    // Room for the two fields the edge adds (`mark_edge`), so the map never grows.
    let mut headers = HeaderMap::with_capacity(head.fields().len() + 2);
    for f in head.fields() {
        if f.class == Class::ContentLength {
            if drop_length {
                continue;
            }
            drop_length = true;
        }
        let name = HeaderName::from_bytes(f.name.of(buf)).map_err(|_| bad("field_name"))?;
        let value = HeaderValue::from_maybe_shared(shared.slice(f.value.range()))
            .map_err(|_| bad("field_value"))?;
        headers.append(name, value);
    }
    *req.headers_mut() = headers;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsed, with every field in a `HeaderMap`.
    fn parsed(raw: &[u8]) -> (Request<()>, Facts) {
        let (mut req, facts, kept) = parse(raw, &Limits::default())
            .expect("valid")
            .expect("complete");
        if let Some(kept) = kept {
            kept.fill_received(&mut req);
        }
        (req, facts)
    }

    fn kept(raw: &[u8]) -> Option<RawRequest> {
        let (req, _, kept) = parse(raw, &Limits::default())
            .expect("valid")
            .expect("complete");
        if kept.is_some() {
            assert!(req.headers().is_empty());
        }
        kept.filter(|k| !k.prefixed(b"anyedge-"))
    }

    #[test]
    fn a_kept_head_keeps_its_target_and_odd_targets_go_the_general_way() {
        let k = kept(b"GET /a/b;p?c=d&e=%20&f=/g:h@i HTTP/1.1\r\nHost: x\r\n\r\n").expect("kept");
        assert_eq!(k.target(), b"/a/b;p?c=d&e=%20&f=/g:h@i");
        assert_eq!(k.uri(), "/a/b;p?c=d&e=%20&f=/g:h@i");
        for odd in ["/a#f", "/a|b", "/{x}", "/a^b", "/a\"b", "/a[1]"] {
            let raw = format!("GET {odd} HTTP/1.1\r\nHost: x\r\n\r\n");
            if let Ok(Some((req, _, kept))) = parse(raw.as_bytes(), &Limits::default()) {
                assert!(kept.is_none(), "{odd} went the general way");
                assert!(req.uri().path().starts_with("/a") || req.uri().path() == "/{x}");
            }
        }
    }

    #[test]
    fn plain_heads_are_kept_as_received_and_others_get_a_map() {
        let raw = kept(b"POST /a HTTP/1.1\r\nHost: x.test\r\nX-A: 1\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc")
            .expect("plain");
        assert_eq!(raw.host(), Some("x.test"));
        assert_eq!(raw.content_length, Some(3));
        let fields: Vec<_> = raw.forwarded().collect();
        assert_eq!(fields, [(&b"Host"[..], &b"x.test"[..]), (b"X-A", b"1")]);
        for other in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nAnyedge-Prefer-Region: syd\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET http://y/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT y:443 HTTP/1.1\r\nHost: y:443\r\n\r\n",
        ] {
            assert!(kept(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn a_get_is_a_request_without_body() {
        let (req, f) = parsed(b"GET /a?b HTTP/1.1\r\nHost: x.test\r\nX-A: 1\r\nX-A: 2\r\n\r\n");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b");
        assert_eq!(req.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(f.body, Body::None);
        assert!(f.keep_alive && !f.upgrade && !f.head && !f.http10);
    }

    #[test]
    fn the_coding_wins_over_a_length_and_the_connection_closes() {
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (req, f) = parsed(raw);
        assert!(req.headers().get("content-length").is_none());
        assert_eq!(f.body, Body::Chunked);
        assert!(!f.keep_alive);
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_are_refused_with_their_status() {
        assert!(parse(b"GET / HTTP/1.1\r\nHo", &Limits::default())
            .expect("ok")
            .is_none());
        let r = parse(b"GET / HTTP/1.1\r\n\r\n", &Limits::default()).expect_err("no host");
        assert_eq!((r.status, r.code), (400, ErrorCode::BadRequest));
        let limits = Limits {
            max_head: 64,
            ..Limits::default()
        };
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(100)
        );
        let r = parse(big.as_bytes(), &limits).expect_err("too large");
        assert_eq!((r.status, r.code), (431, ErrorCode::HeadersTooLarge));
    }

    #[test]
    fn upgrade_expect_and_head_are_noted() {
        let (_, f) = parsed(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(f.upgrade);
        let (_, f) = parsed(
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        );
        assert!(f.expect_continue);
        assert_eq!(f.body, Body::Length(3));
        let (_, f) = parsed(b"HEAD / HTTP/1.0\r\n\r\n");
        assert!(f.head && f.http10 && !f.keep_alive);
    }
}
