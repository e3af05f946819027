//! Writing a response to an HTTP/1.1 client: the head in one buffer with the body's first
//! bytes when they are ready (one write for a small response), then the body re-framed
//! canonically: `Content-Length` when its size is known, chunked (trailers at the end) when
//! not, until close for an HTTP/1.0 client. HEAD, 1xx, 204 and 304 responses carry no body.

use super::buffers;
use crate::instance::body::RespBody;
use crate::instance::headers::{line, Decimal};
use anyedge_http1::{write_last_chunk, ChunkHead, Class, CHUNK_END};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderName, Response};
use http_body::{Body, Frame};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// Body bytes gathered behind the head before writing.
const GATHER: usize = 16 * 1024;
/// Data frames up to this size are copied into the write buffer; larger ones are written from
/// their own memory.
const COPY: usize = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No body is sent (HEAD, 1xx, 204, 304, a switch).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, size unknown).
    Close,
}

/// What shapes a response: the request it answers and the connection's state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub head: bool,
    pub http10: bool,
    /// The connection closes after this response.
    pub close: bool,
}

pub(super) struct Writer {
    buf: Vec<u8>,
    at: usize,
    big: Option<Bytes>,
    chunk_end_after_big: bool,
    body: Option<RespBody>,
    mode: Mode,
    /// The connection must close after this response.
    pub close: bool,
    /// Some of the head has been written (no interim response may come now).
    pub started: bool,
}

impl Writer {
    /// `id_name`: the request id's field name, written from the body's request id
    /// ([`RespBody::set_request_id`]) in place of any field of that name.
    pub fn new(resp: Response<RespBody>, shape: Shape, id_name: Option<&HeaderName>) -> Writer {
        let (parts, mut body) = resp.into_parts();
        let id = id_name.zip(body.take_request_id());
        let is_id = |name: &[u8]| {
            id.as_ref().is_some_and(|(n, _)| {
                let n = n.as_str().as_bytes();
                n.len() == name.len() && n.eq_ignore_ascii_case(name)
            })
        };
        let status = parts.status.as_u16();
        let no_body = shape.head || status < 200 || status == 204 || status == 304;
        let mut close = shape.close;
        let mode = match body.size_hint().exact() {
            _ if no_body => Mode::None,
            Some(n) => Mode::Length(n),
            None if !shape.http10 => Mode::Chunked,
            None => {
                close = true;
                Mode::Close
            }
        };
        let mut buf = buffers::write_buffer();
        buf.extend_from_slice(b"HTTP/1.1 ");
        buf.extend_from_slice(parts.status.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        buf.extend_from_slice(b"\r\n");
        // A HEAD or 304 answer tells the length the body would have.
        let keep_length = no_body && status >= 200 && status != 204;
        let mut dated = false;
        if let Some(raw) = body.take_raw_head() {
            // The instance's fields as received (no `HeaderMap` was built for them), less
            // those the answer's own fields replace.
            for (name, value, class) in raw.fields() {
                let keep = match class {
                    Class::ContentLength => keep_length,
                    Class::Other => {
                        !is_id(name)
                            && !parts.headers.keys().any(|k| {
                                k.as_str().len() == name.len()
                                    && k.as_str().as_bytes().eq_ignore_ascii_case(name)
                            })
                    }
                    class => !class.is_hop_by_hop(),
                };
                if keep {
                    dated |= name.eq_ignore_ascii_case(b"date");
                    line(&mut buf, name, value);
                }
            }
        }
        for (name, value) in &parts.headers {
            let keep = if name == CONTENT_LENGTH {
                keep_length
            } else if name == CONNECTION {
                status == 101
            } else {
                name != TRANSFER_ENCODING
                    && name.as_str() != "keep-alive"
                    && !is_id(name.as_str().as_bytes())
            };
            if keep {
                dated |= name == DATE;
                line(&mut buf, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if let Some((name, value)) = &id {
            line(&mut buf, name.as_str().as_bytes(), value.as_bytes());
        }
        if !dated {
            date::with(|d| line(&mut buf, b"date", d));
        }
        match mode {
            Mode::Length(n) => {
                line(&mut buf, b"content-length", Decimal::new(n).as_bytes());
            }
            Mode::Chunked => line(&mut buf, b"transfer-encoding", b"chunked"),
            Mode::None | Mode::Close => {}
        }
        if status != 101 {
            if close {
                line(&mut buf, b"connection", b"close");
            } else if shape.http10 {
                line(&mut buf, b"connection", b"keep-alive");
            }
        }
        buf.extend_from_slice(b"\r\n");
        Writer {
            buf,
            at: 0,
            big: None,
            chunk_end_after_big: false,
            // A body that is not sent is dropped now: its slots and connection go back.
            body: (mode != Mode::None).then_some(body),
            mode,
            close,
            started: false,
        }
    }

    /// Write the head and the whole body. An error means the connection cannot go on (the
    /// client went away, or the body failed mid-way: the client sees it cut short).
    pub fn poll_write<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            while self.big.is_none() && self.buf.len() - self.at < GATHER {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                // Small bytes already read from an instance are copied from its read buffer,
                // with no frame made of them.
                if matches!(self.mode, Mode::Length(_) | Mode::Close) {
                    if let Some(n) = body.copy_buffered(&mut self.buf, COPY) {
                        if let Mode::Length(left) = &mut self.mode {
                            let Some(rest) = left.checked_sub(n as u64) else {
                                let e = io::Error::other("the body is longer than its length");
                                return Poll::Ready(Err(e));
                            };
                            *left = rest;
                        }
                        continue;
                    }
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.frame(frame)?,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                    Poll::Ready(None) => self.end()?,
                    Poll::Pending => break,
                }
            }
            if self.at < self.buf.len() || self.big.is_some() {
                let n = {
                    let big = self.big.as_deref().unwrap_or_default();
                    let slices = [
                        io::IoSlice::new(&self.buf[self.at..]),
                        io::IoSlice::new(big),
                    ];
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.started = true;
                self.advance(n);
                continue;
            }
            if self.body.is_none() {
                return Pin::new(&mut *io).poll_flush(cx);
            }
            return Poll::Pending;
        }
    }

    fn advance(&mut self, mut n: usize) {
        let in_buf = (self.buf.len() - self.at).min(n);
        self.at += in_buf;
        n -= in_buf;
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        if n > 0 {
            if let Some(big) = self.big.as_mut() {
                let _ = big.split_to(n.min(big.len()));
                if big.is_empty() {
                    self.big = None;
                    if std::mem::take(&mut self.chunk_end_after_big) {
                        self.buf.extend_from_slice(CHUNK_END);
                    }
                }
            }
        }
    }

    fn frame(&mut self, frame: Frame<Bytes>) -> io::Result<()> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Mode::Chunked, Ok(trailers)) = (self.mode, frame.into_trailers()) {
                    let fields = trailers
                        .iter()
                        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
                    write_last_chunk(fields, &mut self.buf);
                    self.body = None;
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.mode {
            Mode::None => return Ok(()),
            Mode::Length(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| io::Error::other("the body is longer than its length"))?;
            }
            Mode::Chunked => self
                .buf
                .extend_from_slice(ChunkHead::new(data.len() as u64).as_bytes()),
            Mode::Close => {}
        }
        let chunked = self.mode == Mode::Chunked;
        if data.len() <= COPY {
            self.buf.extend_from_slice(&data);
            if chunked {
                self.buf.extend_from_slice(CHUNK_END);
            }
        } else {
            self.big = Some(data);
            self.chunk_end_after_big = chunked;
        }
        Ok(())
    }

    fn end(&mut self) -> io::Result<()> {
        self.body = None;
        match self.mode {
            Mode::Length(0) | Mode::None | Mode::Close => Ok(()),
            Mode::Length(_) => Err(io::Error::other("the body is shorter than its length")),
            Mode::Chunked => {
                write_last_chunk(std::iter::empty(), &mut self.buf);
                Ok(())
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        buffers::give_back(std::mem::take(&mut self.buf));
    }
}

/// The `Date` field's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.0 != secs {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    cached.1.copy_from_slice(text.as_bytes());
                    cached.0 = secs;
                }
            }
            f(&cached.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn written(resp: Response<RespBody>, shape: Shape) -> String {
        let mut w = Writer::new(resp, shape, None);
        let mut out = Vec::new();
        std::future::poll_fn(|cx| w.poll_write(&mut out, cx))
            .await
            .expect("written");
        String::from_utf8(out).expect("text")
    }

    fn shape() -> Shape {
        Shape {
            head: false,
            http10: false,
            close: false,
        }
    }

    #[tokio::test]
    async fn a_small_response_is_one_buffer_with_its_length() {
        let resp = Response::new(RespBody::full(Bytes::from_static(b"hello")));
        let out = written(resp, shape()).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("content-length: 5\r\n"), "{out}");
        assert!(out.contains("date: "), "{out}");
        assert!(out.ends_with("\r\n\r\nhello"), "{out}");
    }

    #[tokio::test]
    async fn head_answers_keep_the_length_and_send_no_body() {
        let mut resp = Response::new(RespBody::empty());
        resp.headers_mut()
            .insert(CONTENT_LENGTH, http::HeaderValue::from_static("42"));
        let out = written(
            resp,
            Shape {
                head: true,
                ..shape()
            },
        )
        .await;
        assert!(out.contains("content-length: 42\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    #[tokio::test]
    async fn closing_answers_say_so() {
        let resp = Response::new(RespBody::empty());
        let out = written(
            resp,
            Shape {
                close: true,
                ..shape()
            },
        )
        .await;
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert!(out.contains("content-length: 0\r\n"), "{out}");
    }
}
