//! Request heads: strict parsing of a (possibly incomplete) buffer into positions, the request
//! rules of RFC 9112 (Host, target forms, framing), and what the connection does next.

use crate::error::Error;
use crate::framing::{self, scratch};
use crate::head::{Field, Fields, Framing, Known, Limits, Span, Status, Version, MAX_FIELDS};

/// A parsed request head: positions into the buffer it was parsed from, plus the facts a proxy
/// needs (framing, hop-by-hop fields, where to route). Parsed once; not meant to be edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Span,
    pub target: Span,
    pub version: Version,
    /// Bytes of the head, final CRLF included: the body (if any) starts here.
    pub len: usize,
    pub fields: Fields,
    pub known: Known,
    pub framing: Framing,
    /// Close the connection after this exchange (`Content-Length` with `Transfer-Encoding`).
    pub must_close: bool,
    /// The authority of an absolute-form or authority-form (CONNECT) target.
    pub authority: Option<Span>,
}

impl RequestHead {
    /// Parses the head at the start of `buf`. `Partial`: read more and call again with the
    /// whole buffer. The result is the same however the bytes arrived (prefix-monotone).
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Status<RequestHead>, Error> {
        let max_fields = limits.max_fields.min(MAX_FIELDS);
        let mut headers = scratch();
        let line_window = &buf[..buf.len().min(limits.max_request_line)];
        if !line_window.contains(&b'\n') {
            // The request line is unfinished: only its bytes are looked at, so its length
            // limit and its syntax are judged on the same bytes whatever follows.
            let mut req = httparse::Request::new(&mut []);
            let result = req.parse_with_uninit_headers(line_window, &mut headers[..max_fields]);
            framing::verdict(result, line_window)?;
            return match buf.len() >= limits.max_request_line {
                true => Err(Error::RequestLineTooLong),
                false => Ok(Status::Partial),
            };
        }
        let window = &buf[..buf.len().min(limits.max_head)];
        let mut req = httparse::Request::new(&mut []);
        let result = req.parse_with_uninit_headers(window, &mut headers[..max_fields]);
        let Some(len) = framing::verdict(result, window)? else {
            return match buf.len() >= limits.max_head {
                true => Err(Error::HeadTooLarge),
                false => Ok(Status::Partial),
            };
        };
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return Err(Error::Method);
        };
        let method = Span::within(buf, method.as_bytes());
        let target = Span::within(buf, target.as_bytes());
        if method.start as usize + limits.max_request_line < line_end(buf, target) {
            return Err(Error::RequestLineTooLong);
        }
        let (fields, known) = framing::collect(buf, req.headers)?;
        let version = framing::version(req.version);
        finish(buf, method, target, version, len, fields, known).map(Status::Complete)
    }

    /// The fields, in the order received.
    pub fn fields(&self) -> &[Field] {
        self.fields.as_slice()
    }

    /// Whether `buf` (the parsed buffer) has this method (case-sensitive, RFC 9110 9.1).
    pub fn method_is(&self, buf: &[u8], method: &[u8]) -> bool {
        self.method.of(buf) == method
    }

    /// Where to route: the target's authority when it has one (it replaces `Host`, RFC 9112
    /// 3.2.2), else the `Host` value (`None` only for an HTTP/1.0 request without either).
    pub fn route_authority(&self) -> Option<Span> {
        self.authority.or(self.known.host)
    }

    /// Whether the connection may carry another request after this exchange.
    pub fn keep_alive(&self) -> bool {
        if self.must_close || self.known.connection.close {
            return false;
        }
        self.version == Version::Http11 || self.known.connection.keep_alive
    }
}

/// The end of the request line: just past the first LF after `target`.
fn line_end(buf: &[u8], target: Span) -> usize {
    let rest = &buf[target.end as usize..];
    target.end as usize
        + rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1)
}

/// The request-level rules, once every field is classified.
fn finish(
    buf: &[u8],
    method: Span,
    target: Span,
    version: Version,
    len: usize,
    fields: Fields,
    mut known: Known,
) -> Result<RequestHead, Error> {
    if version == Version::Http11 && known.host.is_none() {
        return Err(Error::MissingHost);
    }
    let authority = target_authority(method.of(buf), target.of(buf))?.map(|a| Span {
        start: target.start + a.start,
        end: target.start + a.end,
    });
    let (declared, must_close) = framing::declared(&mut known, version)?;
    Ok(RequestHead {
        method,
        target,
        version,
        len,
        fields,
        known,
        framing: declared.unwrap_or(Framing::None),
        must_close,
        authority,
    })
}

/// Checks the target's form against the method (RFC 9112 3.2) and finds its authority, as a
/// span relative to the target: origin-form (`/p`), asterisk-form (`*`, OPTIONS only),
/// authority-form (CONNECT only, and CONNECT only takes it), absolute-form (`http`/`https`,
/// no userinfo, non-empty authority). No fragment anywhere.
fn target_authority(method: &[u8], target: &[u8]) -> Result<Option<Span>, Error> {
    if target.contains(&b'#') {
        return Err(Error::Target);
    }
    let authority = |start: usize, bytes: &[u8]| {
        let len = bytes
            .iter()
            .position(|&b| matches!(b, b'/' | b'?'))
            .unwrap_or(bytes.len());
        let a = &bytes[..len];
        match !a.is_empty() && a.iter().all(|&b| crate::fields::is_authority_byte(b)) {
            true => Ok((
                Span {
                    start: start as u32,
                    end: (start + len) as u32,
                },
                len,
            )),
            false => Err(Error::Target),
        }
    };
    if method == b"CONNECT" {
        let (span, len) = authority(0, target)?;
        return match len == target.len() {
            true => Ok(Some(span)),
            false => Err(Error::Target),
        };
    }
    match target {
        [b'/', ..] => Ok(None),
        b"*" if method == b"OPTIONS" => Ok(None),
        _ => {
            let scheme_len = scheme_len(target).ok_or(Error::Target)?;
            let start = scheme_len + 3;
            authority(start, &target[start..]).map(|(span, _)| Some(span))
        }
    }
}

/// The length of an `http` or `https` scheme followed by `://` (case-insensitive).
fn scheme_len(target: &[u8]) -> Option<usize> {
    let starts = |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    if starts(b"http://") {
        Some(4)
    } else if starts(b"https://") {
        Some(5)
    } else {
        None
    }
}
