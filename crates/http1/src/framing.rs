//! The framing decision of RFC 9112 section 6.3 from the classified fields, shared by requests
//! and responses, and the head-reading steps both share (bounded windows, fields into spans).

use crate::error::Error;
use crate::fields;
use crate::head::{Field, Fields, Framing, Known, Version, MAX_FIELDS};
use crate::lines;
use std::mem::MaybeUninit;

/// httparse's scratch space for one head (uninitialised: no per-parse clearing).
pub(crate) type Scratch<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS];

pub(crate) fn scratch<'b>() -> Scratch<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// The framing a `Transfer-Encoding`/`Content-Length` pair gives: `Ok(None)` when neither is
/// present. With both, `Transfer-Encoding` wins, the length is dropped from `known`, and the
/// second value says "close the connection after this exchange" (RFC 9112 6.3 rule 3).
pub(crate) fn declared(
    known: &mut Known,
    version: Version,
) -> Result<(Option<Framing>, bool), Error> {
    let Some(te) = known.transfer_encoding else {
        return Ok((known.content_length.map(Framing::Length), false));
    };
    if version == Version::Http10 {
        return Err(Error::TransferEncodingOnHttp10);
    }
    if !te.chunked_last {
        return Err(Error::TransferEncodingNotChunked);
    }
    if te.count > te.chunked {
        return Err(Error::UnsupportedTransferCoding);
    }
    if te.chunked > 1 {
        return Err(Error::RepeatedChunked);
    }
    let had_length = known.content_length.take().is_some();
    Ok((Some(Framing::Chunked), had_length))
}

/// The fields httparse found, as spans of `buf`, classified, with the per-field rules applied.
pub(crate) fn collect(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
) -> Result<(Fields, Known), Error> {
    let mut list = Fields::with_capacity(headers.len());
    let mut known = Known::default();
    for h in headers {
        let field = Field {
            name: crate::head::Span::within(buf, h.name.as_bytes()),
            value: crate::head::Span::within(buf, h.value),
            class: fields::classify(h.name.as_bytes()),
        };
        fields::note(&mut known, &field, buf)?;
        list.push(field);
    }
    Ok((list, known))
}

/// Turns httparse's verdict on `window` into ours (`Ok(None)`: partial).
pub(crate) fn verdict(
    result: httparse::Result<usize>,
    window: &[u8],
) -> Result<Option<usize>, Error> {
    match result {
        Ok(httparse::Status::Complete(n)) if lines::has_bare_lf(&window[..n]) => Err(Error::BareLf),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(lines::diagnose(e, window, true)),
    }
}

/// The version httparse read (it accepts only 0 and 1).
pub(crate) fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    }
}
