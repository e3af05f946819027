//! The request body, read off the client connection when (and only when) whoever carries the
//! request asks for it ([`Feed`]): `Content-Length` bytes counted, chunked bodies decoded with
//! checked sizes and capped trailers, so the body goes on re-framed and never as received. The
//! first ask of a request that sent `Expect: 100-continue` answers `100 Continue` first (unless
//! the response has begun).

use super::head::Body;
use crate::instance::buffers::ReadBuffer;
use crate::instance::headers::trailer_map;
use crate::instance::inbound::{Feed, Want};
use anyedge_http1::ChunkedDecoder;
use bytes::Bytes;
use http::HeaderMap;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The most a chunk handed on holds.
const CHUNK: usize = 64 * 1024;

enum Framing {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
}

/// Where the body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Reading,
    /// Read to its end (trailers included).
    Ended,
    /// The client's framing was broken or the client went away: the connection cannot go on.
    Broken,
    /// Whoever carried the request dropped it before its end.
    Abandoned,
}

pub(super) struct Pump {
    feed: Feed,
    framing: Framing,
    /// Bytes of `100 Continue` still to write; `None` when none is owed.
    continue_at: Option<usize>,
    pub progress: Progress,
}

impl Pump {
    pub fn new(feed: Feed, body: Body, expect_continue: bool) -> Option<Pump> {
        let framing = match body {
            Body::None => return None,
            Body::Length(n) => Framing::Length(n),
            Body::Chunked => Framing::Chunked(Box::default()),
        };
        Some(Pump {
            feed,
            framing,
            continue_at: expect_continue.then_some(0),
            progress: Progress::Reading,
        })
    }

    /// Read for the consumer while it asks; `Ready` once nothing more will be read.
    /// `responding`: the response head has begun, so no `100 Continue` may be written.
    pub fn poll<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        buf: &mut ReadBuffer,
        responding: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Progress> {
        while self.progress == Progress::Reading {
            match self.feed.poll_want(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Want::Gone) => {
                    self.progress = Progress::Abandoned;
                    break;
                }
                Poll::Ready(Want::More) => {}
            }
            if responding && self.continue_at == Some(0) {
                self.continue_at = None;
            }
            if let Some(at) = self.continue_at {
                match std::pin::Pin::new(&mut *io).poll_write(cx, &CONTINUE[at..]) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(n)) if n > 0 => {
                        let at = at + n;
                        self.continue_at = (at < CONTINUE.len()).then_some(at);
                        continue;
                    }
                    Poll::Ready(_) => return Poll::Ready(self.broken("the client went away")),
                }
            }
            if !buf.is_empty() {
                self.decode(buf);
                continue;
            }
            let spare = buf.spare(crate::instance::buffers::SIZE);
            let mut rb = ReadBuf::new(spare);
            match std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    let n = rb.filled().len();
                    buf.filled(n);
                }
                Poll::Ready(_) => {
                    return Poll::Ready(self.broken("the client closed before its body ended"))
                }
            }
        }
        Poll::Ready(self.progress)
    }

    /// Take what the buffer holds of the body: at most one chunk for the consumer.
    fn decode(&mut self, buf: &mut ReadBuffer) {
        match &mut self.framing {
            Framing::Length(left) => {
                let unread = buf.unread();
                let n = unread.len().min(*left as usize).min(CHUNK);
                let chunk = Bytes::copy_from_slice(&unread[..n]);
                buf.consume(n);
                *left -= n as u64;
                self.feed.push(chunk);
                if *left == 0 {
                    self.end(None);
                }
            }
            Framing::Chunked(decoder) => {
                let unread = buf.unread();
                match decoder.decode(&unread[..unread.len().min(CHUNK)]) {
                    Ok((used, anyedge_http1::Decoded::Data(r))) => {
                        let chunk = Bytes::copy_from_slice(&unread[r]);
                        buf.consume(used);
                        self.feed.push(chunk);
                    }
                    Ok((used, anyedge_http1::Decoded::NeedMore)) => buf.consume(used),
                    Ok((used, anyedge_http1::Decoded::Done)) => {
                        buf.consume(used);
                        let trailers = trailer_map(decoder);
                        self.end(trailers);
                    }
                    Err(_) => {
                        self.broken("malformed chunked body");
                    }
                }
            }
        }
    }

    /// A `100 Continue` is half written: nothing else may be written before its end.
    pub fn writing_interim(&self) -> bool {
        self.continue_at.is_some_and(|at| at > 0)
    }

    fn end(&mut self, trailers: Option<HeaderMap>) {
        self.feed.finish(trailers);
        self.progress = Progress::Ended;
    }

    fn broken(&mut self, why: &'static str) -> Progress {
        self.feed.fail(why);
        self.progress = Progress::Broken;
        self.progress
    }

    /// After the response: skip what the buffer already holds of an abandoned body. Whether
    /// the body is then behind us (the connection can carry the next request).
    pub fn skip_buffered(&mut self, buf: &mut ReadBuffer) -> bool {
        if self.progress == Progress::Ended {
            return true;
        }
        if self.progress == Progress::Broken {
            return false;
        }
        match &mut self.framing {
            Framing::Length(left) => {
                let n = buf.unread().len().min(*left as usize);
                buf.consume(n);
                *left -= n as u64;
                *left == 0
            }
            Framing::Chunked(decoder) => loop {
                match decoder.decode(buf.unread()) {
                    Ok((used, anyedge_http1::Decoded::Data(_))) => buf.consume(used),
                    Ok((used, anyedge_http1::Decoded::Done)) => {
                        buf.consume(used);
                        return true;
                    }
                    Ok((used, anyedge_http1::Decoded::NeedMore)) => {
                        buf.consume(used);
                        return false;
                    }
                    Err(_) => return false,
                }
            },
        }
    }
}
