//! One stream of our HTTP/2 server, driven by its connection's task: the forwarding core's
//! future until the response head, then the response body onto the stream within its window.
//! A client that resets the stream meanwhile cancels the request (its future is dropped).

use super::idle::StreamGuard;
use super::tunnel::Tunnel;
use crate::instance::body::{BodyError, BoxError};
use crate::instance::h2body::Pipe;
use crate::instance::upgrade::Switched;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::header::{self, HeaderMap};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// An extended CONNECT's receiving side, and where its tunnel goes once the 200 is sent.
pub(super) struct Connect {
    pub recv: RecvStream,
    pub to: oneshot::Sender<Switched>,
}

pin_project_lite::pin_project! {
    /// A stream's future: resolves once its answer is sent whole, or the stream is reset.
    pub(super) struct Respond<F, B> {
        #[pin]
        answering: F,
        state: State<B>,
    }
}

enum State<B> {
    /// Waiting for the answer's head.
    Waiting {
        respond: SendResponse<Bytes>,
        connect: Option<Connect>,
        guard: StreamGuard,
    },
    /// Sending its body.
    Sending {
        pipe: Pipe<ErrInto<B>>,
        _guard: StreamGuard,
    },
    Done,
}

impl<F, B> Respond<F, B> {
    pub fn new(
        answering: F,
        respond: SendResponse<Bytes>,
        connect: Option<Connect>,
        guard: StreamGuard,
    ) -> Self {
        Respond {
            answering,
            state: State::Waiting {
                respond,
                connect,
                guard,
            },
        }
    }
}

impl<F, B> Future for Respond<F, B>
where
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            match this.state {
                State::Waiting { respond, .. } => {
                    let Poll::Ready(resp) = this.answering.as_mut().poll(cx) else {
                        // The client may reset the stream meanwhile: the request is cancelled.
                        if let Poll::Ready(reason) = respond.poll_reset(cx) {
                            tracing::debug!(?reason, "client reset a stream before its answer");
                            *this.state = State::Done;
                            return Poll::Ready(());
                        }
                        return Poll::Pending;
                    };
                    let State::Waiting {
                        respond,
                        connect,
                        guard,
                    } = std::mem::replace(this.state, State::Done)
                    else {
                        unreachable!("the state matched `Waiting` just above");
                    };
                    match send_head(resp, respond, connect, guard) {
                        Some(sending) => *this.state = sending,
                        None => return Poll::Ready(()),
                    }
                }
                State::Sending { pipe, .. } => {
                    let sent = Pin::new(pipe).poll(cx);
                    let Poll::Ready(sent) = sent else {
                        return Poll::Pending;
                    };
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "response body not sent whole");
                    }
                    *this.state = State::Done;
                    return Poll::Ready(());
                }
                State::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Send the answer's head; the state that sends its body, if it has one. A successful answer
/// to an extended CONNECT opens the tunnel instead.
fn send_head<B>(
    resp: Response<B>,
    mut respond: SendResponse<Bytes>,
    connect: Option<Connect>,
    guard: StreamGuard,
) -> Option<State<B>>
where
    B: Body<Data = Bytes> + Unpin,
{
    let (mut parts, body) = resp.into_parts();
    strip_connection_headers(&mut parts.headers);
    if !parts.headers.contains_key(header::DATE) {
        parts.headers.insert(header::DATE, date::now());
    }
    if let Some(Connect { recv, to }) = connect {
        if parts.status.is_success() {
            // RFC 8441: the 200 opens the tunnel; it carries no body of its own.
            parts.headers.remove(header::CONTENT_LENGTH);
            let send = respond
                .send_response(Response::from_parts(parts, ()), false)
                .ok()?;
            // A tunnel the core no longer waits for is dropped, and resets its stream.
            let _ = to.send(Box::new(Tunnel::new(send, recv, guard)));
            return None;
        }
    }
    let end = body.is_end_stream();
    if !end && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(len) = body.size_hint().exact() {
            parts.headers.insert(header::CONTENT_LENGTH, len.into());
        }
    }
    let stream = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "response head not sent");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return None;
        }
    };
    if end {
        return None;
    }
    Some(State::Sending {
        pipe: Pipe {
            body: ErrInto(body),
            stream,
            pending: None,
            finished: false,
            cancel: None,
        },
        _guard: guard,
    })
}

/// Fields HTTP/2 forbids in a response (RFC 9113 8.2.2), and those a `Connection` field names.
fn strip_connection_headers(headers: &mut HeaderMap) {
    if let Some(conn) = headers.remove(header::CONNECTION) {
        if let Ok(names) = conn.to_str() {
            for name in names.split(',') {
                headers.remove(name.trim());
            }
        }
    }
    for name in [
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// A response body whose errors are [`BodyError`]s, as [`Pipe`] takes them.
pub(super) struct ErrInto<B>(B);

impl<B> Body for ErrInto<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.0)
            .poll_frame(cx)
            .map_err(|e| BodyError::Read(e.into()))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// The `Date` field's value, made once a second per thread (hyper's server added it too).
mod date {
    use http::HeaderValue;
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }

    pub fn now() -> HeaderValue {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with(|cell| {
            let mut cached = cell.borrow_mut();
            match &cached.1 {
                Some(v) if cached.0 == secs => v.clone(),
                _ => {
                    let v = HeaderValue::try_from(httpdate::fmt_http_date(now))
                        .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
                    *cached = (secs, Some(v.clone()));
                    v
                }
            }
        })
    }
}
