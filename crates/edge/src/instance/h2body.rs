//! Bodies on HTTP/2 streams of the `h2` crate. Read ([`RecvBody`]): flow-control window given
//! back as the data is taken, trailers passed on, and a [`Cancel`] that stops the request's side
//! of the stream when the response is dropped unfinished. Written ([`Pipe`]): within the
//! stream's window, trailers included. Backhaul's client uses them for workers' answers and its
//! request bodies; our HTTP/2 server (`crate::h2server`) for request bodies and answers.

use super::body::BodyError;
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Waker};

/// Stops a request body's pipe running on its own when its response is dropped unfinished (the
/// client went away): the stream is reset rather than left open at the worker.
#[derive(Default)]
pub(crate) struct Cancel {
    stopped: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Cancel {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            w.wake();
        }
    }

    /// Whether stopped; if not, `cx` is woken when it is.
    pub fn poll_stopped(&self, cx: &Context<'_>) -> bool {
        if self.stopped.load(Ordering::Acquire) {
            return true;
        }
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        self.stopped.load(Ordering::Acquire)
    }
}

/// A response body read from an HTTP/2 stream. Window is given back as the data is taken, so a
/// client that reads slowly slows its stream, not the connection.
pub(crate) struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// The request body's pipe, when it runs on its own.
    cancel: Option<Arc<Cancel>>,
}

impl RecvBody {
    /// The body of `recv`; `cancel`, when the request's body is still being sent on its own,
    /// is stopped if this body is dropped before its end.
    pub fn new(recv: RecvStream, cancel: Option<Arc<Cancel>>) -> RecvBody {
        RecvBody {
            recv,
            data_done: false,
            cancel,
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let Some(c) = self.cancel.take() {
            if !self.recv.is_end_stream() {
                c.stop();
            }
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // (An RST_STREAM(NO_ERROR) after the response's END_STREAM is no error here:
                // `h2` keeps the stream's end. One before it cuts the response short, and is.)
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Why a stream failed (a backhaul stream to a worker).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("backhaul: {0}")]
    H2(#[from] h2::Error),
    #[error(transparent)]
    Body(BodyError),
    #[error("backhaul stream reset by the worker ({0})")]
    Reset(h2::Reason),
}

impl StreamError {
    /// The HTTP/2 error, if the failure came from the connection or the worker.
    pub fn h2(&self) -> Option<&h2::Error> {
        match self {
            StreamError::H2(e) => Some(e),
            _ => None,
        }
    }
}

/// Moves a body onto its stream, within the stream's flow-control window: a request body to a
/// worker (backhaul's client), or a response body to a client or an edge (our HTTP/2 server).
/// At most one chunk read from the body waits for window at a time, so a peer that reads slowly
/// holds its stream's window and one chunk here, never more.
pub(crate) struct Pipe<B> {
    pub body: B,
    pub stream: SendStream<Bytes>,
    /// Data read from the body that has not fit in the window yet, and whether it is the last.
    pub pending: Option<(Bytes, bool)>,
    /// The stream's send side ended (end of body, trailers, or reset): nothing to cancel.
    pub finished: bool,
    pub cancel: Option<Arc<Cancel>>,
}

impl<B> Drop for Pipe<B> {
    /// A body dropped before its end (a timeout, the request abandoned) resets its stream, so
    /// the worker and the instance stop waiting for the rest.
    fn drop(&mut self) {
        if !self.finished {
            self.stream.send_reset(h2::Reason::CANCEL);
        }
    }
}

/// Headers HTTP/2 forbids (RFC 9113, 8.2.2), which `h2` refuses to send in trailers.
const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

impl<B> Future for Pipe<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Output = Result<(), StreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = this.poll_pipe(cx);
        if polled.is_ready() {
            this.finished = true;
        }
        polled
    }
}

impl<B> Pipe<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    fn poll_pipe(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        let this = self;
        if this.cancel.as_ref().is_some_and(|c| c.poll_stopped(cx)) {
            this.stream.send_reset(h2::Reason::CANCEL);
            return Poll::Ready(Err(StreamError::Reset(h2::Reason::CANCEL)));
        }
        loop {
            if let Some((data, last)) = this.pending.as_mut() {
                while this.stream.capacity() == 0 {
                    match this.stream.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(None) => return Poll::Ready(Err(reset(&mut this.stream, cx))),
                        Poll::Pending => {
                            if let Poll::Ready(r) = this.stream.poll_reset(cx) {
                                return Poll::Ready(Err(reset_reason(r)));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                let n = this.stream.capacity().min(data.len());
                let chunk = data.split_to(n);
                let end = *last && data.is_empty();
                if this.stream.send_data(chunk, end).is_err() {
                    return Poll::Ready(Err(reset(&mut this.stream, cx)));
                }
                if data.is_empty() {
                    this.pending = None;
                    if end {
                        return Poll::Ready(Ok(()));
                    }
                } else {
                    this.stream.reserve_capacity(data.len());
                }
                continue;
            }
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => {
                    // The worker may answer and reset the stream while the client is slow.
                    if let Poll::Ready(r) = this.stream.poll_reset(cx) {
                        return Poll::Ready(Err(reset_reason(r)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    if this.stream.send_data(Bytes::new(), true).is_err() {
                        return Poll::Ready(Err(reset(&mut this.stream, cx)));
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Err(StreamError::Body(e)));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    let last = this.body.is_end_stream();
                    this.stream.reserve_capacity(data.len());
                    this.pending = Some((data, last));
                }
                Err(frame) => {
                    let sent = match frame.into_trailers() {
                        Ok(mut trailers) => {
                            for name in CONNECTION_SPECIFIC {
                                trailers.remove(name);
                            }
                            this.stream.send_trailers(trailers)
                        }
                        Err(_) => this.stream.send_data(Bytes::new(), true),
                    };
                    if sent.is_err() {
                        return Poll::Ready(Err(reset(&mut this.stream, cx)));
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

fn reset(stream: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> StreamError {
    match stream.poll_reset(cx) {
        Poll::Ready(r) => reset_reason(r),
        Poll::Pending => StreamError::Reset(h2::Reason::STREAM_CLOSED),
    }
}

fn reset_reason(r: Result<h2::Reason, h2::Error>) -> StreamError {
    match r {
        Ok(reason) => StreamError::Reset(reason),
        Err(e) => StreamError::H2(e),
    }
}
