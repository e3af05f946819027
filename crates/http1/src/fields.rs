//! Field classification: which well-known field a name is, and what its value says (list
//! tokens, `Content-Length` digits, `Transfer-Encoding` codings, `Connection` options).

use crate::error::Error;
use crate::head::{Class, Expect, Field, Known, TransferCodings};

/// Which well-known field `name` is (ASCII case-insensitive), dispatched on length first.
pub(crate) fn classify(name: &[u8]) -> Class {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match name.len() {
        2 if is(b"te") => Class::Te,
        4 if is(b"host") => Class::Host,
        6 if is(b"expect") => Class::Expect,
        7 if is(b"upgrade") => Class::Upgrade,
        7 if is(b"trailer") => Class::Trailer,
        10 if is(b"connection") => Class::Connection,
        10 if is(b"keep-alive") => Class::KeepAlive,
        14 if is(b"content-length") => Class::ContentLength,
        16 if is(b"proxy-connection") => Class::ProxyConnection,
        17 if is(b"transfer-encoding") => Class::TransferEncoding,
        _ => Class::Other,
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The non-empty elements of a comma-separated list, whitespace trimmed (RFC 9110 5.6.1).
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

/// Records what `field` says into `known`; errors on the rules that concern one field at a time.
pub(crate) fn note(known: &mut Known, field: &Field, buf: &[u8]) -> Result<(), Error> {
    let value = field.value.of(buf);
    match field.class {
        Class::Host => {
            if known.host.is_some() {
                return Err(Error::DuplicateHost);
            }
            if !value.iter().all(|&b| is_authority_byte(b)) {
                return Err(Error::InvalidHost);
            }
            known.host = Some(field.value);
        }
        Class::ContentLength => {
            let n = content_length(value)?;
            if known.content_length.is_some_and(|m| m != n) {
                return Err(Error::DifferingContentLength);
            }
            known.content_length = Some(n);
        }
        Class::TransferEncoding => note_codings(known, value),
        Class::Connection => note_connection(known, value),
        Class::Upgrade => known.upgrade = known.upgrade.or(Some(field.value)),
        Class::Expect => {
            known.expect = match value.eq_ignore_ascii_case(b"100-continue") {
                true if known.expect != Expect::Other => Expect::Continue,
                _ => Expect::Other,
            }
        }
        Class::Te => {
            known.te_trailers |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers"))
        }
        Class::Trailer => known.trailer = true,
        Class::KeepAlive => known.keep_alive = true,
        Class::ProxyConnection => known.proxy_connection = true,
        Class::Other => {}
    }
    Ok(())
}

/// A `Content-Length` value: `1*DIGIT`. No sign, no hex, no list (`5, 5` is refused: RFC 9110
/// 8.6 lets a recipient refuse it, and a proxy that took it would forward a framing its next
/// hop may read otherwise), no value above `u64::MAX`.
pub(crate) fn content_length(value: &[u8]) -> Result<u64, Error> {
    if value.contains(&b',') {
        return Err(Error::InvalidContentLength);
    }
    let mut agreed = None;
    for element in value.split(|&b| b == b',').map(trim) {
        if element.is_empty() || element.len() > 20 {
            return Err(Error::InvalidContentLength);
        }
        let mut n: u64 = 0;
        for &b in element {
            if !b.is_ascii_digit() {
                return Err(Error::InvalidContentLength);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or(Error::InvalidContentLength)?;
        }
        if agreed.is_some_and(|m| m != n) {
            return Err(Error::DifferingContentLength);
        }
        agreed = Some(n);
    }
    agreed.ok_or(Error::InvalidContentLength)
}

fn note_codings(known: &mut Known, value: &[u8]) {
    let codings = known
        .transfer_encoding
        .get_or_insert(TransferCodings::default());
    for coding in tokens(value) {
        let name = trim(coding.split(|&b| b == b';').next().unwrap_or_default());
        let chunked = name.eq_ignore_ascii_case(b"chunked") && name.len() == coding.len();
        codings.count += 1;
        codings.chunked += u32::from(chunked);
        codings.chunked_last = chunked;
    }
    // An empty field (`Transfer-Encoding:`) lists no coding: its final coding is not chunked.
    if tokens(value).next().is_none() {
        codings.count += 1;
        codings.chunked_last = false;
    }
}

fn note_connection(known: &mut Known, value: &[u8]) {
    let options = &mut known.connection;
    for token in tokens(value) {
        if token.eq_ignore_ascii_case(b"close") {
            options.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            options.keep_alive = true;
        } else if token.eq_ignore_ascii_case(b"upgrade") {
            options.upgrade = true;
        } else {
            options.names_fields = true;
        }
    }
}

/// A byte allowed in `uri-host [":" port]` (RFC 3986: unreserved, sub-delims, `%`, `:`, `[]`).
pub(crate) fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b)
}

/// Whether `name` is listed by one of the `Connection` fields of `fields`.
pub(crate) fn named_by_connection(name: &[u8], fields: &[Field], buf: &[u8]) -> bool {
    fields
        .iter()
        .filter(|f| f.class == Class::Connection)
        .any(|f| tokens(f.value.of(buf)).any(|t| t.eq_ignore_ascii_case(name)))
}
