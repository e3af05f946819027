//! Head serialization for forwarding: the received head copied in runs of unchanged field
//! lines, minus what must not be forwarded, plus the proxy's own fields and canonical framing.

use crate::error::Error;
use crate::fields::named_by_connection;
use crate::head::{Class, Field, Framing, Known};
use crate::lines::is_token;
use crate::request::RequestHead;
use crate::response::ResponseHead;

/// What to change while forwarding a head. Always removed: hop-by-hop fields (`Connection`,
/// `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`), the fields
/// `Connection` names, and every `Content-Length` (framing is re-emitted canonically).
#[derive(Debug, Clone, Copy, Default)]
pub struct Edits<'a> {
    /// Requests: a new target (e.g. origin-form for an absolute-form one).
    pub target: Option<&'a [u8]>,
    /// Requests: the `Host` value to send (every received `Host` is dropped).
    pub host: Option<&'a [u8]>,
    /// Fields whose names start with one of these (ASCII lowercase) are dropped.
    pub remove_prefixes: &'a [&'a [u8]],
    /// Fields appended; a received field with the same name is dropped (replace).
    pub set: &'a [(&'a [u8], &'a [u8])],
    /// Keep `Upgrade` and send `Connection: upgrade` (when the head asked for an upgrade).
    pub keep_upgrade: bool,
    /// Send `Connection: close`.
    pub close: bool,
    /// The framing to declare instead of the head's own (e.g. `Chunked` for a response whose
    /// body runs until close, re-framed for a keep-alive client).
    pub framing: Option<Framing>,
}

/// Appends the request head to send to the instance: `HTTP/1.1` whatever the client spoke.
pub fn write_request(
    head: &RequestHead,
    buf: &[u8],
    edits: &Edits<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    check(edits)?;
    out.reserve(head.len + extra_len(edits));
    out.extend_from_slice(head.method.of(buf));
    out.push(b' ');
    out.extend_from_slice(edits.target.unwrap_or(head.target.of(buf)));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = edits.host {
        put(out, b"host", host);
    }
    let framing = edits.framing.unwrap_or(head.framing);
    let known = &head.known;
    write_fields(head.fields(), head.len, buf, known, edits, out);
    finish(framing, None, known, edits, out);
    Ok(())
}

/// Appends the response head to send to the client: `HTTP/1.1`, the same status and reason.
pub fn write_response(
    head: &ResponseHead,
    buf: &[u8],
    edits: &Edits<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    check(edits)?;
    out.reserve(head.len + extra_len(edits));
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (head.code / 100 % 10) as u8,
        b'0' + (head.code / 10 % 10) as u8,
        b'0' + (head.code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(head.reason.of(buf));
    out.extend_from_slice(b"\r\n");
    let framing = edits.framing.unwrap_or(head.framing);
    // A response to HEAD, or a 304, keeps the length of the representation it describes.
    let described =
        (framing == Framing::None && head.code >= 200 && head.code != 204 && !head.tunnel)
            .then_some(head.known.content_length)
            .flatten();
    write_fields(head.fields(), head.len, buf, &head.known, edits, out);
    finish(framing, described, &head.known, edits, out);
    Ok(())
}

/// Copies the kept field lines, a run of adjacent ones at a time. Field lines are adjacent in
/// `buf` (CRLF only, no obs-fold): line `i` ends where line `i + 1` starts, the last one where
/// the final CRLF starts.
fn write_fields(
    fields: &[Field],
    head_len: usize,
    buf: &[u8],
    known: &Known,
    edits: &Edits<'_>,
    out: &mut Vec<u8>,
) {
    let mut run: Option<usize> = None;
    for field in fields {
        let start = field.name.start as usize;
        match (keep(field, fields, buf, known, edits), run) {
            (true, None) => run = Some(start),
            (false, Some(from)) => {
                out.extend_from_slice(buf.get(from..start).unwrap_or_default());
                run = None;
            }
            _ => {}
        }
    }
    if let Some(from) = run {
        out.extend_from_slice(
            buf.get(from..head_len.saturating_sub(2))
                .unwrap_or_default(),
        );
    }
}

fn keep(field: &Field, fields: &[Field], buf: &[u8], known: &Known, edits: &Edits<'_>) -> bool {
    match field.class {
        Class::Upgrade => edits.keep_upgrade && known.connection.upgrade,
        Class::ContentLength => false,
        Class::Host => edits.host.is_none(),
        class if class.is_hop_by_hop() => false,
        _ => {
            let name = field.name.of(buf);
            let prefixed =
                |p: &&[u8]| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p);
            !(edits.remove_prefixes.iter().any(prefixed)
                || edits.set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
                || (field.class == Class::Other
                    && known.connection.names_fields
                    && named_by_connection(name, fields, buf)))
        }
    }
}

/// The framing field, the set fields, `Connection`, and the empty line.
fn finish(
    framing: Framing,
    described: Option<u64>,
    known: &Known,
    edits: &Edits<'_>,
    out: &mut Vec<u8>,
) {
    match (framing, described) {
        (Framing::Length(n), _) | (Framing::None, Some(n)) => put_length(out, n),
        (Framing::Chunked, _) => put(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    for (name, value) in edits.set {
        put(out, name, value);
    }
    let upgrade = edits.keep_upgrade && known.connection.upgrade && known.upgrade.is_some();
    match (edits.close, upgrade) {
        (true, _) => put(out, b"connection", b"close"),
        (false, true) => put(out, b"connection", b"upgrade"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_length(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    put(out, b"content-length", &digits[at..]);
}

fn extra_len(edits: &Edits<'_>) -> usize {
    let set: usize = edits.set.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    set + edits.host.map_or(0, |h| h.len() + 8) + edits.target.map_or(0, <[u8]>::len) + 64
}

/// Edits must not smuggle a line break or a bad name into the head.
fn check(edits: &Edits<'_>) -> Result<(), Error> {
    let value_ok = |v: &[u8]| v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    let names_ok = edits
        .set
        .iter()
        .all(|(n, v)| !n.is_empty() && n.iter().all(|&b| is_token(b)) && value_ok(v));
    let host_ok = edits
        .host
        .is_none_or(|h| h.iter().all(|&b| crate::fields::is_authority_byte(b)));
    let target_ok = edits
        .target
        .is_none_or(|t| !t.is_empty() && t.iter().all(|&b| b > 0x20 && b != 0x7f));
    match names_ok && host_ok && target_ok {
        true => Ok(()),
        false => Err(Error::InvalidEdit),
    }
}
