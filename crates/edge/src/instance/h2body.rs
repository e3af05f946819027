//! Bodies read from an HTTP/2 stream of the `h2` crate: flow-control window given back as the
//! data is taken, trailers passed on, and a [`Cancel`] that stops the request's side of the
//! stream when the response is dropped unfinished. Backhaul's client uses them for workers'
//! answers.

use super::body::BodyError;
use bytes::Bytes;
use h2::RecvStream;
use http_body::{Body, Frame, SizeHint};
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
