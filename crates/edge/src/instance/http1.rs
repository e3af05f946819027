//! Our HTTP/1.1 client to instances: a request is written and its response read by the task
//! that carries it, on a bare pooled socket (no connection task, no channel, no buffer while the
//! connection is idle). Heads are parsed by `anyedge-http1` (strict RFC 9112, the same rules as
//! for clients, so an instance cannot smuggle a second response onto a client's connection).
//!
//! What it does that hyper's client did not:
//! - an instance that answers before it has read the whole request body (a replay request, a
//!   413, a redirect) has its answer used even when writing the rest of the body then fails:
//!   the write side stops and the response is read (HAProxy and nginx do the same);
//! - the head and the body bytes that are ready go out in one vectored write;
//! - a response body is handed on as slices of the read buffer, never copied.
//!
//! The connection goes back to its pool only when the request was written whole, the response
//! was read to its end with nothing after it, and both sides allow keep-alive.

use super::body::{BodyError, ReqBody};
use super::headers::{content_length, line, trailer_map, ClientFields, Decimal};
use super::pool::UpstreamPool;
use anyedge_http1::{ChunkHead, ChunkedDecoder, Decoded, Framing, Limits, ResponseHead, Status};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// How much a read asks for: a response head and a small body usually arrive in one.
const READ_SIZE: usize = 16 * 1024;
/// Body bytes gathered behind the head (or each other) before they are written.
const GATHER: usize = 64 * 1024;
/// Slices in one vectored write.
const MAX_SLICES: usize = 16;

/// Response heads from instances: the same bounds as for clients' heads.
const LIMITS: Limits = Limits {
    max_request_line: 8 * 1024,
    max_head: 64 * 1024,
    max_fields: anyedge_http1::MAX_FIELDS,
};

/// Why a request to an instance failed once (part of) it was written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    /// Writing failed and nothing of a response came back.
    #[error("error writing the request to the instance: {0}")]
    Write(#[source] io::Error),
    #[error("error reading the instance's response: {source}")]
    Read {
        #[source]
        source: io::Error,
        /// Whether any byte of a response had arrived.
        started: bool,
    },
    #[error("the instance closed the connection before answering")]
    Closed,
    #[error("the instance closed the connection in the middle of its response head")]
    ClosedInHead,
    #[error("the instance's response head is invalid: {0}")]
    Head(anyedge_http1::Error),
    #[error("the instance's response has a field that cannot be forwarded")]
    Field,
    #[error("the instance switched protocols without being asked to")]
    Switched,
    /// The request's own body failed (the client's side, or over its limit).
    #[error(transparent)]
    Body(BodyError),
}

impl H1Error {
    /// The connection failed (closed or reset) before any byte of a response: on a reused
    /// connection, the keep-alive race (the instance closed it as the request went out).
    pub fn closed_before_response(&self) -> bool {
        match self {
            H1Error::Closed => true,
            H1Error::Write(e)
            | H1Error::Read {
                source: e,
                started: false,
            } => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// The request head our client writes: the request's own parts, borrowed (a retry writes them
/// again; nothing is copied per attempt).
pub(crate) struct Outbound<'a> {
    pub method: &'a Method,
    /// Written in origin form (its path and query).
    pub uri: &'a Uri,
    /// Hop-by-hop fields already removed; `Content-Length` and `Transfer-Encoding` are ours.
    pub headers: &'a HeaderMap,
    /// The client's forwarding fields, written into the head; `None`: `headers` has them.
    pub fields: Option<ClientFields<'a>>,
    /// The client's request head as our HTTP/1.1 server received it: its fields are written
    /// from those bytes (less hop-by-hop and framing fields), then `headers` (the edge's own).
    pub raw: Option<&'a RawRequest>,
    /// Keep the response head as received ([`RawHead`], on the body) instead of building its
    /// `HeaderMap`: for a response our own HTTP/1.1 server writes to its client, which copies
    /// the fields from the received bytes. Everyone else gets the `HeaderMap`.
    pub raw_answer: bool,
}

impl<'a> Outbound<'a> {
    pub fn of(parts: &'a http::request::Parts) -> Outbound<'a> {
        Outbound {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            fields: None,
            raw: None,
            raw_answer: false,
        }
    }
}

/// A request head kept as our HTTP/1.1 server received it (its bytes and where its fields
/// are), so that no `HeaderMap` is built for it: our HTTP/1.1 client copies its fields into
/// the head it sends. Only plain requests are kept so (`front/http1/head.rs`): none of the
/// proxy's own prefixed fields, no field that `Connection` names, no `Upgrade`, and an
/// origin-form target; anything else takes the `HeaderMap`.
#[derive(Debug)]
pub(crate) struct RawRequest {
    /// The head's bytes: a write buffer from the thread's pool, given back on drop.
    pub bytes: Vec<u8>,
    /// The request target (origin form, of bytes that `Uri` takes as they are: see
    /// `front/http1/head.rs`). The request beside a kept head carries `/` as its `Uri`: the
    /// target is written from here, and made a `Uri` only on the general way ([`Self::uri`]).
    pub target: anyedge_http1::Span,
    pub fields: anyedge_http1::Fields,
    /// The one `Host` value.
    pub host: Option<anyedge_http1::Span>,
    /// The agreed `Content-Length` (`None` beside `Transfer-Encoding`).
    pub content_length: Option<u64>,
    /// `TE` lists `trailers`: the one `TE` value that travels (`te: trailers`; gRPC needs it).
    pub te_trailers: bool,
    /// The edge's own fields' values (its region, the request id: `mark_edge`), written
    /// after the received ones as `names.region` and `names.request_id`; set by the
    /// forwarding core.
    pub edge: Option<(HeaderValue, super::headers::RequestId)>,
}

impl Drop for RawRequest {
    fn drop(&mut self) {
        super::buffers::give_back(std::mem::take(&mut self.bytes));
    }
}

impl RawRequest {
    /// The request target as received.
    pub fn target(&self) -> &[u8] {
        self.target.of(&self.bytes)
    }

    /// The target as a `Uri`, for the general way (a copy).
    pub fn uri(&self) -> Uri {
        Uri::try_from(self.target()).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// The fields that are forwarded: all but the hop-by-hop ones and the framing ones (the
    /// client re-frames the body; `Content-Length` goes on only in [`Self::fill`]), then
    /// `te: trailers` when the client's `TE` listed it.
    pub fn forwarded(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let received = self.fields.as_slice().iter().filter_map(|f| {
            let skip = f.class.is_hop_by_hop() || f.class == anyedge_http1::Class::ContentLength;
            (!skip).then(|| (f.name.of(&self.bytes), f.value.of(&self.bytes)))
        });
        let te = self.te_trailers.then_some((&b"te"[..], &b"trailers"[..]));
        received.chain(te)
    }

    /// Whether a field's name starts with `prefix` (lower-case; any case matches).
    pub fn prefixed(&self, prefix: &[u8]) -> bool {
        self.fields
            .as_slice()
            .iter()
            .any(|f| starts_with_ignore_case(f.name.of(&self.bytes), prefix))
    }

    /// The fields `keep` lets through into `map`, in order, each value a copy (the general
    /// way only). The parser's rules are stricter than `HeaderName`'s and `HeaderValue`'s, so
    /// none fails.
    fn append(&self, map: &mut HeaderMap, mut keep: impl FnMut(&anyedge_http1::Field) -> bool) {
        map.reserve(self.fields.as_slice().len() + 2);
        for f in self.fields.as_slice().iter().filter(|f| keep(f)) {
            let name = HeaderName::from_bytes(f.name.of(&self.bytes));
            let value = HeaderValue::from_bytes(f.value.of(&self.bytes));
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
    }

    /// The target and every field as received into `req` (hop-by-hop fields too;
    /// `Content-Length` once, and not beside `Transfer-Encoding`): what the forwarding core's
    /// general way starts from.
    pub fn fill_received<T>(self, req: &mut http::Request<T>) {
        *req.uri_mut() = self.uri();
        let map = req.headers_mut();
        let mut drop_length = self.content_length.is_none();
        self.append(map, |f| {
            f.class != anyedge_http1::Class::ContentLength
                || !std::mem::replace(&mut drop_length, true)
        });
    }

    /// The `Host` value.
    pub fn host(&self) -> Option<&str> {
        std::str::from_utf8(self.host?.of(&self.bytes)).ok()
    }

    /// The fields as a `HeaderMap` gets them for a carrier other than our HTTP/1.1 client
    /// (hop-by-hop ones left out, one `Content-Length` when there is no coding).
    pub fn fill(&self, map: &mut HeaderMap, names: &super::headers::Prefixed) {
        self.append(map, |f| {
            !f.class.is_hop_by_hop() && f.class != anyedge_http1::Class::ContentLength
        });
        if self.te_trailers {
            map.insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some((region, id)) = &self.edge {
            map.insert(names.region.clone(), region.clone());
            map.insert(names.request_id.clone(), id.header_value());
        }
        if let Some(n) = self.content_length {
            map.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// Whether `name` starts with `prefix`, ASCII case-insensitively.
pub(crate) fn starts_with_ignore_case(name: &[u8], prefix: &[u8]) -> bool {
    name.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Write the request on `io` and read the response head. The response body reads on from the
/// same socket and gives it back to `pool` at its end.
pub(crate) async fn send<B>(
    mut io: TcpStream,
    head: Outbound<'_>,
    body: ReqBody<B>,
    pool: Arc<UpstreamPool>,
) -> Result<Response<H1Body>, H1Error>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut out = Outgoing::new(&head, body);
    let mut buf = super::buffers::response_buffer();
    let mut write_failed = None;
    let mut started = false;
    let head_only = *head.method == Method::HEAD;
    let raw_answer = head.raw_answer;
    let head = poll_fn(|cx| {
        if write_failed.is_none() && !out.is_done() {
            match out.poll_write(&mut io, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                // Keep reading: the instance may have answered and stopped reading (the write
                // fails with EPIPE or a reset while its answer waits in our receive queue).
                Poll::Ready(Err(WriteError::Io(e))) => write_failed = Some(e),
                Poll::Ready(Err(WriteError::Body(e))) => return Poll::Ready(Err(H1Error::Body(e))),
                // The client's body broke its own Content-Length: the client's fault (400),
                // not the instance's.
                Poll::Ready(Err(WriteError::Length)) => {
                    let e = "the request body does not match its Content-Length";
                    return Poll::Ready(Err(H1Error::Body(BodyError::Read(e.into()))));
                }
            }
        }
        match ready!(poll_head(&mut io, &mut buf, cx, head_only, &mut started)) {
            Ok(head) => Poll::Ready(Ok(head)),
            Err(e) => Poll::Ready(Err(match write_failed.take() {
                Some(w) if matches!(e, H1Error::Closed | H1Error::Read { started: false, .. }) => {
                    H1Error::Write(w)
                }
                _ => e,
            })),
        }
    })
    .await?;
    if head.tunnel {
        return Err(H1Error::Switched);
    }
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(head.code).map_err(|_| H1Error::Field)?;
    if head.version == anyedge_http1::Version::Http10 {
        *resp.version_mut() = Version::HTTP_10;
    }
    // Hop-by-hop fields are left out here, where they are known by class, so the answer needs
    // no scan for them later (`response_back`); when `Connection` names other fields, they all
    // go in and are removed by name.
    let named = head.known.connection.names_fields;
    let framing = match head.framing {
        Framing::Length(0) | Framing::None => In::Done,
        Framing::Length(n) => In::Length(n),
        Framing::Chunked => In::Chunked(Box::default()),
        Framing::UntilClose => In::UntilClose,
    };
    let reusable = head.keep_alive() && write_failed.is_none();
    let raw_head = if raw_answer && !named {
        // A copy of the head into a pooled buffer: the read buffer is not split (a split
        // shares it, an allocation), and the copy is given back once the head is written.
        let mut bytes = super::buffers::write_buffer();
        bytes.extend_from_slice(&buf[..head.len]);
        buf.advance(head.len);
        Some(RawHead {
            bytes,
            fields: head.fields,
        })
    } else {
        // The head's bytes, shared by every value (a copy each was an allocation each).
        let raw = buf.split_to(head.len).freeze();
        let headers = resp.headers_mut();
        headers.reserve(head.fields().len());
        for f in head.fields() {
            if f.class.is_hop_by_hop() && !named {
                continue;
            }
            let name = HeaderName::from_bytes(f.name.of(&raw)).map_err(|_| H1Error::Field)?;
            let value = HeaderValue::from_maybe_shared(raw.slice(f.value.range()))
                .map_err(|_| H1Error::Field)?;
            headers.append(name, value);
        }
        if named {
            super::headers::strip_hop_by_hop(headers, false);
        }
        None
    };
    let mut body = H1Body {
        io: Some(io),
        buf,
        framing: In::Done,
        writer: None,
        reusable,
        pool,
        raw_head,
    };
    if !out.is_done() && write_failed.is_none() {
        // The instance answered before the whole body was written: go on writing it while the
        // response is read (an echo streams its answer as the body comes). The connection
        // closes after the response unless the body was written whole by then.
        body.writer = Some(Box::new(out));
    }
    match framing {
        In::Done => body.finish(),
        framing => body.framing = framing,
    }
    Ok(resp.map(|()| body))
}

/// Read until a final response head is complete (1xx interim heads are skipped).
fn poll_head(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    head_only: bool,
    started: &mut bool,
) -> Poll<Result<ResponseHead, H1Error>> {
    let method: &[u8] = if head_only { b"HEAD" } else { b"GET" };
    loop {
        if !buf.is_empty() {
            *started = true;
            match ResponseHead::parse(buf, method, &LIMITS) {
                Ok(Status::Complete(h)) if h.is_interim() => {
                    buf.advance(h.len);
                    continue;
                }
                Ok(Status::Complete(h)) => return Poll::Ready(Ok(h)),
                Ok(Status::Partial) => {}
                Err(e) => return Poll::Ready(Err(H1Error::Head(e))),
            }
        }
        if buf.capacity() - buf.len() < READ_SIZE / 4 {
            buf.reserve(READ_SIZE);
        }
        match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)) {
            Ok(0) if *started => return Poll::Ready(Err(H1Error::ClosedInHead)),
            Ok(0) => return Poll::Ready(Err(H1Error::Closed)),
            Ok(_) => {}
            Err(source) => {
                let started = *started;
                return Poll::Ready(Err(H1Error::Read { source, started }));
            }
        }
    }
}

/// Why writing a request failed.
enum WriteError {
    Io(io::Error),
    Body(BodyError),
    Length,
}

/// A request on its way out: the head, then the body framed by Content-Length or chunked.
struct Outgoing<B> {
    body: ReqBody<B>,
    /// Body bytes still to come under a Content-Length; `None`: chunked.
    remaining: Option<u64>,
    /// The request head, written from `head_at` on before anything queued: a write buffer
    /// from the thread's pool, given back when the request is done.
    head: Vec<u8>,
    head_at: usize,
    /// Body bytes queued for the socket after the head, in order (no memory until a body
    /// chunk is queued).
    queued: VecDeque<Bytes>,
    /// The head's unwritten bytes and the queued ones.
    queued_len: usize,
    /// The body has ended and its end is queued.
    ended: bool,
}

impl<B> Outgoing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn new(parts: &Outbound<'_>, body: ReqBody<B>) -> Self {
        let declared = match parts.raw {
            Some(raw) => raw.content_length,
            None => content_length(parts.headers),
        };
        let (framing, ended) = match &body {
            ReqBody::Empty => {
                // Methods that carry a body say when theirs is empty (as clients do).
                let says_empty = declared.is_some()
                    || matches!(*parts.method, Method::POST | Method::PUT | Method::PATCH);
                (says_empty.then_some(Some(0)), true)
            }
            body => {
                let length = declared.or_else(|| body.size_hint().exact());
                (Some(length), false)
            }
        };
        let raw_len = parts.raw.map_or(0, |r| r.bytes.len());
        let mut head = super::buffers::write_buffer();
        head.reserve(256 + raw_len + 32 * parts.headers.len());
        write_head(parts, framing, &mut head);
        Outgoing {
            body,
            remaining: framing.flatten(),
            queued_len: head.len(),
            head,
            head_at: 0,
            queued: VecDeque::new(),
            ended,
        }
    }

    fn is_done(&self) -> bool {
        self.ended && self.queued_len == 0
    }

    /// Queue what the body has ready (up to [`GATHER`] bytes) and write it; `Ready(Ok)` once
    /// the whole request is written.
    fn poll_write(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            while !self.ended && self.queued_len < GATHER {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(frame) => self.queue(frame)?,
                }
            }
            if self.queued_len == 0 {
                return match self.ended {
                    true => Poll::Ready(Ok(())),
                    false => Poll::Pending,
                };
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let head = &self.head[self.head_at..];
            let skip = usize::from(!head.is_empty());
            slices[0] = IoSlice::new(head);
            let n = skip + self.queued.len().min(MAX_SLICES - skip);
            for (slice, bytes) in slices[skip..n].iter_mut().zip(&self.queued) {
                *slice = IoSlice::new(bytes);
            }
            let written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WriteError::Io(e))),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(written)) => written,
            };
            self.consume(written);
        }
    }

    fn consume(&mut self, mut written: usize) {
        let head = (self.head.len() - self.head_at).min(written);
        self.head_at += head;
        written -= head;
        if self.head_at == self.head.len() && !self.head.is_empty() {
            super::buffers::give_back(std::mem::take(&mut self.head));
            self.head_at = 0;
        }
        while written > 0 {
            let Some(front) = self.queued.front_mut() else {
                return;
            };
            let take = written.min(front.len());
            front.advance(take);
            written -= take;
            if front.is_empty() {
                self.queued.pop_front();
            }
        }
        self.queued_len =
            self.head.len() - self.head_at + self.queued.iter().map(Bytes::len).sum::<usize>();
    }

    fn push(&mut self, bytes: Bytes) {
        self.queued_len += bytes.len();
        self.queued.push_back(bytes);
    }

    fn queue(&mut self, frame: Option<Result<Frame<Bytes>, BodyError>>) -> Result<(), WriteError> {
        let frame = match frame {
            None => {
                self.ended = true;
                return match self.remaining {
                    None => {
                        self.push(Bytes::from_static(b"0\r\n\r\n"));
                        Ok(())
                    }
                    Some(0) => Ok(()),
                    Some(_) => Err(WriteError::Length),
                };
            }
            Some(Err(e)) => return Err(WriteError::Body(e)),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => Ok(()),
            Ok(data) => match &mut self.remaining {
                Some(left) => {
                    *left = left
                        .checked_sub(data.len() as u64)
                        .ok_or(WriteError::Length)?;
                    self.push(data);
                    Ok(())
                }
                None => {
                    let head = ChunkHead::new(data.len() as u64);
                    self.push(Bytes::copy_from_slice(head.as_bytes()));
                    self.push(data);
                    self.push(Bytes::from_static(anyedge_http1::CHUNK_END));
                    Ok(())
                }
            },
            Err(frame) => {
                // Trailers end the body; under a Content-Length they cannot be sent.
                if let (Ok(trailers), None) = (frame.into_trailers(), self.remaining) {
                    let mut last = Vec::with_capacity(64);
                    let fields = trailers
                        .iter()
                        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
                    anyedge_http1::write_last_chunk(fields, &mut last);
                    self.push(Bytes::from(last));
                    self.ended = true;
                }
                Ok(())
            }
        }
    }
}

/// The request head: origin-form target, the fields as they are (the caller removed the
/// hop-by-hop ones), and the framing of the body as it will be sent: `Some(Some(n))`
/// Content-Length, `Some(None)` chunked, `None` no body and nothing to say.
fn write_head(parts: &Outbound<'_>, framing: Option<Option<u64>>, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match parts.raw {
        Some(raw) => out.extend_from_slice(raw.target()),
        None => {
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            out.extend_from_slice(target.as_bytes());
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Inline: a client behind a load balancer sends one `X-Forwarded-For` or a few.
    let mut xff: smallvec::SmallVec<[&[u8]; 4]> = smallvec::SmallVec::new();
    if let Some(raw) = parts.raw {
        for (name, value) in raw.forwarded() {
            if parts.fields.is_some_and(|f| f.replaces_raw(name)) {
                if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                    xff.push(value);
                }
                continue;
            }
            line(out, name, value);
        }
        // A kept head always comes with the client's fields (and their names).
        if let (Some((region, id)), Some(f)) = (&raw.edge, parts.fields) {
            line(out, f.names.region.as_str().as_bytes(), region.as_bytes());
            line(out, f.names.request_id.as_str().as_bytes(), id.as_bytes());
        }
    }
    for (name, value) in parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        if parts.fields.is_some_and(|f| f.replaces(name)) {
            if name.as_str() == "x-forwarded-for" {
                xff.push(value.as_bytes());
            }
            continue;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Some(Some(n)) => line(out, b"content-length", Decimal::new(n).as_bytes()),
        Some(None) => line(out, b"transfer-encoding", b"chunked"),
        None => {}
    }
    if let Some(fields) = parts.fields {
        fields.write(&xff, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// What is left of a response body.
#[derive(Default)]
enum In {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    UntilClose,
    #[default]
    Done,
}

/// The rest of a request body still being written while the response is read.
trait WriteRest: Send {
    fn poll_rest(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), ()>>;
}

impl<B> Drop for Outgoing<B> {
    /// A head not written whole (the instance failed) goes back to the pool all the same.
    fn drop(&mut self) {
        super::buffers::give_back(std::mem::take(&mut self.head));
    }
}

impl<B> WriteRest for Outgoing<B>
where
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_rest(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        self.poll_write(io, cx).map_err(|_| ())
    }
}

/// An instance's response body, read from its connection as the client takes it; the
/// connection goes back to its pool at the end when it may carry another request.
pub(crate) struct H1Body {
    io: Option<TcpStream>,
    buf: BytesMut,
    framing: In,
    writer: Option<Box<dyn WriteRest>>,
    reusable: bool,
    pool: Arc<UpstreamPool>,
    /// The response head as received, when it was asked for (`Outbound::raw_answer`).
    raw_head: Option<RawHead>,
}

/// A response head kept as received: its bytes (a write buffer from the thread's pool, given
/// back when the head is dropped) and where its fields are. Hop-by-hop fields are still among
/// them (known by class); whoever writes the head leaves them out.
pub(crate) struct RawHead {
    pub bytes: Vec<u8>,
    pub fields: anyedge_http1::Fields,
}

impl Drop for RawHead {
    fn drop(&mut self) {
        super::buffers::give_back(std::mem::take(&mut self.bytes));
    }
}

impl RawHead {
    /// Each field's name and value, with its class.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8], anyedge_http1::Class)> {
        self.fields
            .as_slice()
            .iter()
            .map(|f| (f.name.of(&self.bytes), f.value.of(&self.bytes), f.class))
    }

    /// The first value of the field `name` (ASCII case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v, _)| v)
    }

    /// Whether a field name starts with `prefix` (lower-case; names compared case-insensitively).
    pub fn any_prefixed(&self, prefix: &[u8]) -> bool {
        self.fields()
            .any(|(n, _, _)| starts_with_ignore_case(n, prefix))
    }
}

/// A response body that ended before its framing said it would.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseBodyError {
    #[error("the instance closed the connection before the end of its response body")]
    Truncated,
    #[error("reading the instance's response body failed: {0}")]
    Read(#[from] io::Error),
    #[error("the instance's chunked response body is invalid: {0}")]
    Chunked(anyedge_http1::Error),
}

impl H1Body {
    /// The response head as received, if it was kept (see [`RawHead`]).
    pub fn raw_head(&self) -> Option<&RawHead> {
        self.raw_head.as_ref()
    }

    /// Takes the head kept as received: its bytes are not needed once it is written.
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        self.raw_head.take()
    }

    /// The body has ended: the connection goes back to its pool if it can carry another
    /// request, else it closes.
    fn finish(&mut self) {
        self.framing = In::Done;
        let io = self.io.take();
        if self.reusable && self.writer.is_none() && self.buf.is_empty() {
            if let Some(io) = io {
                self.pool.put(io);
            }
        }
        super::buffers::give_back_response(std::mem::take(&mut self.buf));
    }

    /// The body's next bytes when they are already read and small: copied to `out` (at most
    /// `max`), with no frame made of them (a frame shares the read buffer: an allocation).
    /// `None`: there is nothing to copy so, and the body is read by frames
    /// ([`Body::poll_frame`]).
    pub fn copy_buffered(&mut self, out: &mut Vec<u8>, max: usize) -> Option<usize> {
        if self.writer.is_some() {
            return None;
        }
        let In::Length(left) = &mut self.framing else {
            return None;
        };
        let n = self
            .buf
            .len()
            .min(usize::try_from(*left).unwrap_or(usize::MAX));
        if n == 0 || n > max {
            return None;
        }
        out.extend_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        *left -= n as u64;
        if *left == 0 {
            self.finish();
        }
        Some(n)
    }

    fn fail(
        &mut self,
        e: ResponseBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        self.reusable = false;
        self.finish();
        Poll::Ready(Some(Err(e)))
    }

    /// The frame the buffered bytes make, if they make one.
    fn buffered(&mut self) -> Option<Result<Frame<Bytes>, ResponseBodyError>> {
        if self.buf.is_empty() {
            return None;
        }
        match &mut self.framing {
            In::Done => None,
            In::Length(left) => {
                let n = self
                    .buf
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                let data = self.buf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    self.finish();
                }
                Some(Ok(Frame::data(data)))
            }
            In::UntilClose => Some(Ok(Frame::data(self.buf.split().freeze()))),
            In::Chunked(decoder) => match decoder.decode(&self.buf) {
                Ok((used, Decoded::Data(range))) => {
                    let data = self.buf.split_to(used).freeze().slice(range);
                    Some(Ok(Frame::data(data)))
                }
                Ok((used, Decoded::NeedMore)) => {
                    self.buf.advance(used);
                    None
                }
                Ok((used, Decoded::Done)) => {
                    self.buf.advance(used);
                    let trailers = trailer_map(decoder);
                    self.finish();
                    trailers.map(|t| Ok(Frame::trailers(t)))
                }
                Err(e) => Some(Err(ResponseBodyError::Chunked(e))),
            },
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self.get_mut();
        loop {
            if let (Some(writer), Some(io)) = (this.writer.as_mut(), this.io.as_mut()) {
                match writer.poll_rest(io, cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(())) => this.writer = None,
                    Poll::Ready(Err(())) => {
                        // The instance stopped reading; its answer goes on, the connection
                        // closes after it.
                        this.writer = None;
                        this.reusable = false;
                    }
                }
            }
            if matches!(this.framing, In::Done) {
                return Poll::Ready(None);
            }
            match this.buffered() {
                Some(Err(e)) => return this.fail(e),
                Some(Ok(frame)) => return Poll::Ready(Some(Ok(frame))),
                None if matches!(this.framing, In::Done) => return Poll::Ready(None),
                None => {}
            }
            let Some(io) = this.io.as_mut() else {
                return this.fail(ResponseBodyError::Truncated);
            };
            if this.buf.capacity() - this.buf.len() < READ_SIZE / 4 {
                this.buf.reserve(READ_SIZE);
            }
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(io),
                cx,
                &mut this.buf
            )) {
                Ok(0) if matches!(this.framing, In::UntilClose) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ResponseBodyError::Truncated),
                Ok(_) => {}
                Err(e) => return this.fail(ResponseBodyError::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, In::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            In::Done => SizeHint::with_exact(0),
            In::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
