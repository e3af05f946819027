//! HTTP/2 client connection idleness, by streams, not bytes: a connection is idle while it has
//! no open stream, counted from when its last stream ended (or, before its first, from its
//! start). Bytes do not count: a client that trickles a HEADERS frame a byte at a time, or
//! answers our keep-alive pings, moves bytes without ever making progress. Once idle for
//! `[http] idle_timeout` (before the first stream, `header_read_timeout`), the connection is
//! closed gracefully (GOAWAY; streams in flight still finish). A stream is open from its head
//! until its answer is sent whole or reset; an extended CONNECT's tunnel, for as long as it lives.

use crate::instance::relay::Activity;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The open streams of one connection, and when one last began or ended.
#[derive(Clone)]
pub(crate) struct Streams(Arc<Inner>);

struct Inner {
    open: AtomicU32,
    last: Activity,
    began: AtomicBool,
}

impl Default for Streams {
    fn default() -> Self {
        Streams(Arc::new(Inner {
            open: AtomicU32::new(0),
            last: Activity::new(),
            began: AtomicBool::new(false),
        }))
    }
}

impl Streams {
    fn touch(&self) {
        self.0.last.touch();
    }

    /// A stream began (its request head arrived); it ends when the guard is dropped (with its
    /// response body, sent or reset).
    pub fn begin(&self) -> StreamGuard {
        self.0.open.fetch_add(1, Ordering::Relaxed);
        self.0.began.store(true, Ordering::Relaxed);
        self.touch();
        StreamGuard(self.clone())
    }

    /// Resolves once the connection has had no open stream for `timeout` (`first` until its
    /// first stream began). Counts from the call.
    pub async fn idle(&self, first: Duration, timeout: Duration) {
        self.touch();
        loop {
            if self.0.open.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let limit = match self.0.began.load(Ordering::Relaxed) {
                true => timeout,
                false => first,
            };
            let idle = self.0.last.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// One open stream (see [`Streams::begin`]).
pub(crate) struct StreamGuard(Streams);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let inner = &self.0 .0;
        inner.open.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn idle_counts_from_the_last_stream_and_never_while_one_is_open() {
        let streams = Streams::default();
        // Before any stream: the first timeout.
        let started = Instant::now();
        streams
            .idle(Duration::from_millis(50), Duration::from_secs(60))
            .await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(5));

        // A stream open for 300 ms holds it open; idle 100 ms after it ended.
        let guard = streams.begin();
        let ender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(guard);
        });
        let started = Instant::now();
        streams
            .idle(Duration::from_millis(10), Duration::from_millis(100))
            .await;
        assert!(
            started.elapsed() >= Duration::from_millis(380),
            "{:?}",
            started.elapsed()
        );
        ender.await.expect("ender");
    }
}
