//! The dashboard's live stream (server-sent events): every update interval the admin task
//! builds the picture once per view that has a reader and offers it to each reader's queue.
//!
//! Bounded everywhere: at most [`MAX_SUBSCRIBERS`] streams, each with a queue of
//! [`QUEUE`] pictures. A reader whose queue is full is slow (its socket does not drain): it is
//! dropped, connection and all, never waited for, so one stuck page costs at most its queue and
//! cannot hold the node's memory or the other pages back. Every picture is a whole one, so a
//! page that reconnects (EventSource does by itself) loses nothing but time.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, Notify};

/// Streams open at once on one node; more get 503.
pub const MAX_SUBSCRIBERS: usize = 64;
/// Pictures queued for one reader before it counts as slow.
pub const QUEUE: usize = 4;
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
    tx: mpsc::Sender<Bytes>,
    /// Closes the reader's connection (see `admin::serve`).
    kill: Arc<Notify>,
}

/// Every open stream.
#[derive(Default)]
pub struct Streams {
    subscribers: Mutex<Vec<Subscriber>>,
    dropped_slow: std::sync::atomic::AtomicU64,
}

impl Streams {
    /// Open a stream for `view`, starting with `first` (the picture now, so the page draws
    /// at once); `None` when [`MAX_SUBSCRIBERS`] are open.
    pub fn subscribe(&self, view: View, first: Bytes, kill: Arc<Notify>) -> Option<SseBody> {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| !s.tx.is_closed());
        if subs.len() >= MAX_SUBSCRIBERS {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        subs.push(Subscriber { view, tx, kill });
        let mut head = format!("retry: {RETRY_MS}\n\n").into_bytes();
        head.extend_from_slice(&first);
        Some(SseBody {
            first: Some(Bytes::from(head)),
            rx,
        })
    }

    pub fn is_empty(&self) -> bool {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| !s.tx.is_closed());
        subs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Readers dropped for being slow since the node started.
    pub fn dropped_slow(&self) -> u64 {
        self.dropped_slow.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The views that have readers now (each built once per update).
    pub fn views(&self) -> Vec<View> {
        let subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut views: Vec<View> = Vec::new();
        for s in subs.iter() {
            if !views.contains(&s.view) {
                views.push(s.view.clone());
            }
        }
        views
    }

    /// Offer each reader its view's picture (`None`: the view is gone, end its streams).
    /// Never waits: a full queue drops the reader.
    pub fn publish(&self, pictures: &[(View, Option<Bytes>)]) {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| {
            let Some((_, picture)) = pictures.iter().find(|(v, _)| *v == s.view) else {
                return !s.tx.is_closed();
            };
            let Some(picture) = picture else {
                return false;
            };
            match s.tx.try_send(picture.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped_slow
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    s.kill.notify_one();
                    false
                }
            }
        });
    }
}

/// One SSE event carrying `json`.
pub fn event(json: &serde_json::Value) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"event: status\ndata: ");
    // serde_json never writes a raw newline inside a value: one `data:` line.
    let _ = serde_json::to_writer(&mut out, json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The response body of one stream: the pictures its queue receives, as they come.
pub struct SseBody {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_reader_is_dropped_and_the_others_keep_going() {
        let streams = Streams::default();
        let slow_kill = Arc::new(Notify::new());
        let _slow = streams
            .subscribe(View::Operator, Bytes::new(), slow_kill.clone())
            .expect("room");
        let mut fast = streams
            .subscribe(View::Operator, Bytes::new(), Arc::new(Notify::new()))
            .expect("room");
        for i in 0..(QUEUE + 1) {
            let picture = Bytes::from(i.to_string());
            streams.publish(&[(View::Operator, Some(picture))]);
            while fast.rx.try_recv().is_ok() {}
        }
        assert_eq!(streams.len(), 1, "the slow reader was dropped");
        assert_eq!(streams.dropped_slow(), 1);
        streams.publish(&[(View::Operator, None)]);
        assert_eq!(streams.len(), 0, "a view that is gone ends its streams");
    }

    #[test]
    fn subscribers_are_bounded() {
        let streams = Streams::default();
        let bodies: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| streams.subscribe(View::Operator, Bytes::new(), Arc::new(Notify::new())))
            .collect();
        assert!(bodies.iter().all(Option::is_some));
        assert!(streams
            .subscribe(View::Operator, Bytes::new(), Arc::new(Notify::new()))
            .is_none());
    }
}
