//! HTTP/2 client connection idleness, by streams, not bytes: a connection is idle while it has
//! no open stream, counted from when its last stream ended (or, before its first, from its
//! start). Bytes do not count: a client that trickles a HEADERS frame a byte at a time, or
//! answers our keep-alive pings, moves bytes without ever making progress. Once idle for
//! `[http] idle_timeout` (before the first stream, `header_read_timeout`), hyper is asked to
//! close the connection gracefully (GOAWAY; streams in flight still finish).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The open streams of one connection, and when one last began or ended.
#[derive(Clone, Default)]
pub(crate) struct Streams(Arc<Inner>);

#[derive(Default)]
struct Inner {
    open: AtomicU32,
    /// Milliseconds since [`epoch`].
    last: AtomicU64,
    began: AtomicBool,
}

impl Streams {
    fn touch(&self) {
        self.0.last.store(now_ms(), Ordering::Relaxed);
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
            let last = self.0.last.load(Ordering::Relaxed);
            let idle = Duration::from_millis(now_ms().saturating_sub(last));
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
