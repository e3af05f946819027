//! A request body fed by the task that owns the connection it arrives on (our HTTP/1.1
//! server): the consumer ([`Inbound`], an `http_body::Body` wherever the request goes) asks for
//! bytes, and the connection's task reads them only then, one chunk at a time. Nothing is read
//! ahead of a consumer that does not ask (a queued request holds no body bytes), and a consumer
//! that goes away stops the reads.

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    ended: bool,
    error: Option<&'static str>,
    /// The consumer is waiting for bytes.
    wanted: bool,
    consumer: Option<Waker>,
    producer: Option<Waker>,
    /// The consumer was dropped: no more bytes are wanted.
    gone: bool,
    /// Bytes still to come, when the framing says (`Content-Length`).
    remaining: Option<u64>,
}

/// The consumer's side: the request's body.
pub(crate) struct Inbound {
    shared: Arc<Mutex<State>>,
}

/// The connection's side.
pub(crate) struct Feed {
    shared: Arc<Mutex<State>>,
}

/// A body and the feed that fills it; `length` is the declared length, if any.
pub(crate) fn channel(length: Option<u64>) -> (Inbound, Feed) {
    let shared = Arc::new(Mutex::new(State {
        remaining: length,
        ..State::default()
    }));
    (
        Inbound {
            shared: shared.clone(),
        },
        Feed { shared },
    )
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let mut s = lock(&self.shared);
        if let Some(data) = s.data.take() {
            if let Some(r) = s.remaining.as_mut() {
                *r = r.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(why) = s.error {
            return Poll::Ready(Some(Err(std::io::Error::other(why))));
        }
        if s.ended {
            return Poll::Ready(s.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        s.wanted = true;
        set_waker(&mut s.consumer, cx);
        if let Some(p) = s.producer.take() {
            p.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        s.ended && s.data.is_none() && s.trailers.is_none() && s.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        match s.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.gone = true;
        if let Some(p) = s.producer.take() {
            p.wake();
        }
    }
}

/// What the consumer wants from the connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Read the next chunk.
    More,
    /// The consumer is gone: read nothing more for it.
    Gone,
}

impl Feed {
    /// `Ready` once the consumer waits for bytes (and has taken the last chunk), or is gone.
    pub fn poll_want(&self, cx: &mut Context<'_>) -> Poll<Want> {
        let mut s = lock(&self.shared);
        if s.gone {
            return Poll::Ready(Want::Gone);
        }
        if s.wanted && s.data.is_none() {
            return Poll::Ready(Want::More);
        }
        set_waker(&mut s.producer, cx);
        Poll::Pending
    }

    /// Hand the consumer a chunk.
    pub fn push(&self, data: Bytes) {
        let mut s = lock(&self.shared);
        s.data = Some(data);
        s.wanted = false;
        if let Some(c) = s.consumer.take() {
            c.wake();
        }
    }

    /// The body ended (with its trailers, if any).
    pub fn finish(&self, trailers: Option<HeaderMap>) {
        let mut s = lock(&self.shared);
        s.ended = true;
        s.trailers = trailers;
        s.remaining = Some(s.data.as_ref().map_or(0, |d| d.len() as u64));
        if let Some(c) = s.consumer.take() {
            c.wake();
        }
    }

    /// The body cannot be read on (a malformed chunk, the client gone).
    pub fn fail(&self, why: &'static str) {
        let mut s = lock(&self.shared);
        s.error = Some(why);
        if let Some(c) = s.consumer.take() {
            c.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn bytes_flow_only_when_asked_and_end_with_trailers() {
        let (mut body, feed) = channel(None);
        let waker = futures_task_noop();
        let mut cx = Context::from_waker(&waker);
        assert!(feed.poll_want(&mut cx).is_pending(), "nobody asked yet");
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(feed.poll_want(&mut cx), Poll::Ready(Want::More));
        feed.push(Bytes::from_static(b"ab"));
        assert!(
            feed.poll_want(&mut cx).is_pending(),
            "the chunk is not taken yet"
        );
        let mut t = HeaderMap::new();
        t.insert("x-sum", http::HeaderValue::from_static("1"));
        let consumer = tokio::spawn(async move { body.collect().await });
        tokio::task::yield_now().await;
        std::future::poll_fn(|cx| feed.poll_want(cx)).await;
        feed.finish(Some(t));
        let all = consumer.await.expect("join").expect("body");
        assert_eq!(
            all.trailers()
                .and_then(|t| t.get("x-sum"))
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(all.to_bytes(), "ab");
    }

    #[test]
    fn a_dropped_body_is_gone_and_a_failure_is_an_error() {
        let (body, feed) = channel(Some(3));
        assert_eq!(body.size_hint().exact(), Some(3));
        drop(body);
        let waker = futures_task_noop();
        assert_eq!(
            feed.poll_want(&mut Context::from_waker(&waker)),
            Poll::Ready(Want::Gone)
        );
        let (mut body, feed) = channel(None);
        feed.fail("broken");
        let polled = Pin::new(&mut body).poll_frame(&mut Context::from_waker(&waker));
        assert!(matches!(polled, Poll::Ready(Some(Err(_)))));
    }

    fn futures_task_noop() -> Waker {
        Waker::noop().clone()
    }
}
