//! Client connection idleness: an I/O wrapper that notes when bytes last moved, and a watchdog
//! that asks hyper to close a connection gracefully once nothing has moved for
//! `[http] idle_timeout` (requests in flight still finish; HTTP/2 gets a GOAWAY).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// When bytes last moved on a connection.
#[derive(Clone, Default)]
pub(crate) struct Activity(Arc<AtomicU64>);

impl Activity {
    fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }

    /// Resolves once nothing has moved for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        self.touch();
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// `IO` with its activity noted on every read and write.
    pub(crate) struct IdleIo<IO> {
        #[pin]
        io: IO,
        activity: Activity,
    }
}

impl<IO> IdleIo<IO> {
    pub fn new(io: IO, activity: Activity) -> Self {
        IdleIo { io, activity }
    }
}

impl<IO: AsyncRead> AsyncRead for IdleIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite> AsyncWrite for IdleIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_and_writes_count_as_activity() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut io = IdleIo::new(a, activity.clone());
        activity.0.store(0, Ordering::Relaxed);
        io.write_all(b"x").await.expect("write");
        let t1 = activity.0.load(Ordering::Relaxed);
        b.write_all(b"y").await.expect("write");
        let mut buf = [0u8; 1];
        io.read_exact(&mut buf).await.expect("read");
        assert!(activity.0.load(Ordering::Relaxed) >= t1);
        assert!(activity.idle_for() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn idle_waits_for_the_timeout_after_the_last_activity() {
        let activity = Activity::default();
        let started = Instant::now();
        activity.idle(Duration::from_millis(100)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));

        // Touched every 20 ms for 300 ms: not idle before 300 + 100 ms.
        let busy = activity.clone();
        let toucher = tokio::spawn(async move {
            for _ in 0..15 {
                busy.touch();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let started = Instant::now();
        activity.idle(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(380),
            "{:?}",
            started.elapsed()
        );
        toucher.await.expect("toucher");
    }
}
