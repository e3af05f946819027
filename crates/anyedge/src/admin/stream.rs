//! The dashboard's live stream (server-sent events): every update interval the admin task
//! builds the picture once per view that has a reader and offers it to each reader.
//!
//! Bounded everywhere: at most [`MAX_SUBSCRIBERS`] streams, and each holds at most one
//! picture not yet sent. Every picture is a whole one, so a newer one replaces an unsent one
//! (a page that reads slower than the node updates sees fewer pictures, never older ones). A
//! page that takes nothing for [`STALL`] while a picture waits (its socket does not drain) is
//! dropped, connection and all: never waited for, never buffered for. A page that reconnects
//! (EventSource does by itself) loses nothing but time.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Streams open at once on one node; more get 503.
pub const MAX_SUBSCRIBERS: usize = 64;
/// A page that has not taken a waiting picture for this long is dropped.
pub const STALL: Duration = Duration::from_secs(5);
/// What EventSource waits before reconnecting, milliseconds.
const RETRY_MS: u32 = 1000;

/// Whose picture a stream gets.
#[derive(Clone, PartialEq, Eq)]
pub enum View {
    Operator,
    /// One app's, while the token it was opened with stays one of the app's (its digest is
    /// checked again at every update, so a revoked token ends the stream).
    App {
        name: String,
        token: [u8; 32],
    },
}

impl View {
    pub fn app(name: &str, token: &str) -> View {
        View::App {
            name: name.to_string(),
            token: Sha256::digest(token.as_bytes()).into(),
        }
    }
}

struct Subscriber {
    view: View,
    slot: Arc<Slot>,
    /// Closes the reader's connection (see `admin::serve`).
    kill: Arc<Notify>,
}

/// The one picture waiting for a reader, and the reader's waker.
#[derive(Default)]
struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    next: Option<Bytes>,
    /// Since when a picture has been waiting (none while the slot is empty).
    waiting_since: Option<Instant>,
    waker: Option<Waker>,
    /// The view is gone: end the stream.
    closed: bool,
}

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Put `picture` in, replacing an unsent one; false if the reader is stalled.
    fn offer(&self, picture: Bytes, now: Instant) -> bool {
        let mut s = self.state();
        if s.waiting_since
            .is_some_and(|t| now.duration_since(t) > STALL)
        {
            return false;
        }
        s.waiting_since.get_or_insert(now);
        s.next = Some(picture);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        true
    }

    fn close(&self) {
        let mut s = self.state();
        s.closed = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

/// Every open stream.
#[derive(Default)]
pub struct Streams {
    subscribers: Mutex<Vec<Subscriber>>,
    dropped_slow: std::sync::atomic::AtomicU64,
    updates: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

impl Streams {
    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A stream whose body is gone (its connection ended) holds the only reference.
        subs.retain(|s| Arc::strong_count(&s.slot) > 1);
        subs
    }

    /// Open a stream for `view`, starting with `first` (the picture now, so the page draws
    /// at once); `None` when [`MAX_SUBSCRIBERS`] are open.
    pub fn subscribe(&self, view: View, first: Bytes, kill: Arc<Notify>) -> Option<SseBody> {
        let mut subs = self.subscribers();
        if subs.len() >= MAX_SUBSCRIBERS {
            return None;
        }
        let slot = Arc::new(Slot::default());
        let mut head = format!("retry: {RETRY_MS}\n\n").into_bytes();
        head.extend_from_slice(&first);
        slot.offer(Bytes::from(head), Instant::now());
        subs.push(Subscriber {
            view,
            slot: slot.clone(),
            kill,
        });
        Some(SseBody { slot })
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers().is_empty()
    }

    pub fn len(&self) -> usize {
        self.subscribers().len()
    }

    /// Readers dropped for being stalled since the node started.
    pub fn dropped_slow(&self) -> u64 {
        self.dropped_slow.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Updates offered to the streams since the node started.
    pub fn updates(&self) -> u64 {
        self.updates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Update intervals skipped since the node started (the update task was more than its
    /// catch-up bound behind).
    pub fn updates_skipped(&self) -> u64 {
        self.skipped.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn skipped(&self, intervals: u64) {
        self.skipped
            .fetch_add(intervals, std::sync::atomic::Ordering::Relaxed);
    }

    /// The views that have readers now (each built once per update).
    pub fn views(&self) -> Vec<View> {
        let subs = self.subscribers();
        let mut views: Vec<View> = Vec::new();
        for s in subs.iter() {
            if !views.contains(&s.view) {
                views.push(s.view.clone());
            }
        }
        views
    }

    /// Offer each reader its view's picture (`None`: the view is gone, end its streams).
    /// Never waits: a stalled reader is dropped.
    pub fn publish(&self, pictures: &[(View, Option<Bytes>)]) {
        let now = Instant::now();
        self.updates
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.subscribers().retain(|s| {
            let Some((_, picture)) = pictures.iter().find(|(v, _)| *v == s.view) else {
                return true;
            };
            let Some(picture) = picture else {
                s.slot.close();
                return false;
            };
            if s.slot.offer(picture.clone(), now) {
                return true;
            }
            self.dropped_slow
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s.kill.notify_one();
            false
        });
    }
}

/// One SSE event carrying `json`, the picture of update number `id` (its `id:` line: a page
/// can tell how many updates a picture stands for, and a test how late it is).
pub fn event(id: u64, json: &impl serde::Serialize) -> Bytes {
    let mut out = Vec::with_capacity(4096);
    let _ = write!(out, "id: {id}\nevent: status\ndata: ");
    // serde_json never writes a raw newline inside a value: one `data:` line.
    let _ = serde_json::to_writer(&mut out, json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The response body of one stream: the latest picture, whenever there is a new one.
pub struct SseBody {
    slot: Arc<Slot>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut s = self.slot.state();
        if let Some(picture) = s.next.take() {
            s.waiting_since = None;
            return Poll::Ready(Some(Ok(Frame::data(picture))));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(body: &mut SseBody) -> Option<Bytes> {
        let mut s = body.slot.state();
        s.waiting_since = None;
        s.next.take()
    }

    #[test]
    fn a_slow_reader_gets_the_latest_picture_and_a_stalled_one_is_dropped() {
        let streams = Streams::default();
        let stalled_kill = Arc::new(Notify::new());
        let _stalled = streams
            .subscribe(View::Operator, Bytes::new(), stalled_kill.clone())
            .expect("room");
        let mut slow = streams
            .subscribe(View::Operator, Bytes::new(), Arc::new(Notify::new()))
            .expect("room");
        for i in 0..100 {
            streams.publish(&[(View::Operator, Some(Bytes::from(i.to_string())))]);
        }
        assert_eq!(
            take(&mut slow).as_deref(),
            Some(&b"99"[..]),
            "only the latest waits"
        );
        assert_eq!(streams.len(), 2, "nobody stalled yet");
        // The stalled reader's picture has waited longer than STALL at the next offer.
        _stalled.slot.state().waiting_since = Instant::now().checked_sub(STALL * 2);
        streams.publish(&[(View::Operator, Some(Bytes::from_static(b"x")))]);
        assert_eq!(streams.len(), 1, "the stalled reader was dropped");
        assert_eq!(streams.dropped_slow(), 1);
        streams.publish(&[(View::Operator, None)]);
        assert_eq!(streams.len(), 0, "a view that is gone ends its streams");
        assert!(slow.slot.state().closed);
    }

    #[test]
    fn subscribers_are_bounded_and_freed_with_their_connection() {
        let streams = Streams::default();
        let mut bodies: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| streams.subscribe(View::Operator, Bytes::new(), Arc::new(Notify::new())))
            .collect();
        assert!(bodies.iter().all(Option::is_some));
        assert!(streams
            .subscribe(View::Operator, Bytes::new(), Arc::new(Notify::new()))
            .is_none());
        bodies.pop();
        assert_eq!(streams.len(), MAX_SUBSCRIBERS - 1);
    }
}
