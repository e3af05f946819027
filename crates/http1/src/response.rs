//! Response heads from instances: the same strict field and framing rules as requests, plus the
//! status- and method-dependent body rules (1xx/204/304/HEAD have none, 101 switches), so an
//! instance cannot smuggle a second response onto the client's connection.

use crate::error::Error;
use crate::framing::{self, scratch};
use crate::head::{Field, Fields, Framing, Known, Limits, Span, Status, Version, MAX_FIELDS};

/// A parsed response head: positions into the buffer it was parsed from, plus its framing.
/// Any error parsing it is the instance's fault: answer the client 502.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub code: u16,
    /// The reason phrase (possibly empty).
    pub reason: Span,
    /// Bytes of the head, final CRLF included.
    pub len: usize,
    pub fields: Fields,
    pub known: Known,
    pub framing: Framing,
    /// Close the connection after this response (`Content-Length` with `Transfer-Encoding`, or
    /// a body delimited by the close).
    pub must_close: bool,
    /// The connection becomes a tunnel after this head (101, or 2xx to CONNECT).
    pub tunnel: bool,
}

impl ResponseHead {
    /// Parses the head at the start of `buf`, answering a request with method `request_method`
    /// (`HEAD` and `CONNECT` change the framing). `Partial`: read more and call again.
    /// `limits.max_request_line` bounds the status line.
    pub fn parse(
        buf: &[u8],
        request_method: &[u8],
        limits: &Limits,
    ) -> Result<Status<ResponseHead>, Error> {
        let max_fields = limits.max_fields.min(MAX_FIELDS);
        let mut headers = scratch();
        let line_window = &buf[..buf.len().min(limits.max_request_line)];
        if !line_window.contains(&b'\n') {
            let mut res = httparse::Response::new(&mut []);
            let result = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut res,
                line_window,
                &mut headers[..max_fields],
            );
            framing::verdict(result, line_window)?;
            return match buf.len() >= limits.max_request_line {
                true => Err(Error::RequestLineTooLong),
                false => Ok(Status::Partial),
            };
        }
        let window = &buf[..buf.len().min(limits.max_head)];
        let mut res = httparse::Response::new(&mut []);
        let result = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            window,
            &mut headers[..max_fields],
        );
        let Some(len) = framing::verdict(result, window)? else {
            return match buf.len() >= limits.max_head {
                true => Err(Error::HeadTooLarge),
                false => Ok(Status::Partial),
            };
        };
        let code = res.code.filter(|c| *c >= 100).ok_or(Error::Status)?;
        let reason = res
            .reason
            .filter(|r| buf.as_ptr_range().contains(&r.as_ptr()))
            .map_or(Span::default(), |r| Span::within(buf, r.as_bytes()));
        let (fields, known) = framing::collect(buf, res.headers)?;
        let version = framing::version(res.version);
        let start = Start {
            version,
            code,
            reason,
            len,
        };
        finish(start, request_method, fields, known).map(Status::Complete)
    }

    /// The fields, in the order received.
    pub fn fields(&self) -> &[Field] {
        self.fields.as_slice()
    }

    /// A 1xx other than 101: another head follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.code) && self.code != 101
    }

    /// Whether the instance's connection may carry another request after this response.
    pub fn keep_alive(&self) -> bool {
        if self.must_close || self.tunnel || self.known.connection.close {
            return false;
        }
        self.version == Version::Http11 || self.known.connection.keep_alive
    }
}

struct Start {
    version: Version,
    code: u16,
    reason: Span,
    len: usize,
}

/// The response framing rules of RFC 9112 6.3 (1-2 and 7), after the shared ones.
fn finish(
    start: Start,
    request_method: &[u8],
    fields: Fields,
    mut known: Known,
) -> Result<ResponseHead, Error> {
    let (declared, mut must_close) = framing::declared(&mut known, start.version)?;
    let code = start.code;
    let tunnel = code == 101 || (request_method == b"CONNECT" && (200..300).contains(&code));
    let no_body = request_method == b"HEAD" || code < 200 || code == 204 || code == 304;
    let framing = match declared {
        _ if no_body || tunnel => Framing::None,
        Some(framing) => framing,
        None => {
            must_close = true;
            Framing::UntilClose
        }
    };
    Ok(ResponseHead {
        version: start.version,
        code,
        reason: start.reason,
        len: start.len,
        fields,
        known,
        framing,
        must_close,
        tunnel,
    })
}
