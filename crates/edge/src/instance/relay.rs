//! Moving bytes between two TCP sockets: `read`/`write` through a pooled buffer (the default), or
//! `splice(2)`: socket -> pipe -> socket, never through user space. Buffers and pipes come from
//! shared pools and are held only while data moves, so an idle connection holds no buffer and no
//! extra descriptor.

use anyedge_telemetry::{AppMetrics, Direction};
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Bytes moved per splice call, and the pipe size asked for.
const PIPE_SIZE: usize = 256 * 1024;
/// Idle pipes kept for reuse; more are closed when returned.
const POOL_MAX: usize = 64;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // A larger pipe moves more per call; the kernel may refuse, which only costs speed.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                pipe.write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        Ok(pipe)
    }
}

/// Empty pipes shared by every connection of a node.
#[derive(Default)]
pub(crate) struct PipePool {
    idle: Mutex<Vec<Pipe>>,
}

impl PipePool {
    fn take(&self) -> io::Result<Pipe> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match pooled {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Pipes pooled now (each holds two descriptors).
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Return a pipe; only empty pipes may come back.
    fn put(&self, pipe: Pipe) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_MAX {
            idle.push(pipe);
        }
    }
}

/// `recv(2)` into `buf`, for a read inside `try_io` (tokio's own `try_read` handles readiness
/// itself).
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length, and the descriptor is open for the
    // duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null offsets are valid
    // for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Buffers for the copy path, shared by every connection of a node; a connection holds one
/// only between a read and the write that empties it.
pub(crate) struct BufPool {
    idle: Mutex<Vec<Box<[u8]>>>,
    size: usize,
    /// Buffers made so far (the pool's own count; tests compare it with the idle ones).
    made: std::sync::atomic::AtomicUsize,
}

impl Default for BufPool {
    fn default() -> BufPool {
        // ANYEDGE_TCP_BUF_KIB: another buffer size, for comparison in benchmarks.
        let size = std::env::var("ANYEDGE_TCP_BUF_KIB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|k| (4..=4096).contains(k))
            .map_or(BUF_SIZE, |k| k * 1024);
        BufPool {
            idle: Mutex::default(),
            size,
            made: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// Idle buffers kept (1 MiB at most).
const BUF_POOL_MAX: usize = 64;

/// Bytes moved per read on the copy path. 16 KiB, as HAProxy's and nginx's stream buffers:
/// measured side by side on loopback (`bench/results/issue-2-tcp-buffers.md`), 16 KiB moved
/// 1.00-1.08x HAProxy's throughput and 64 KiB or 256 KiB 0.86-0.95x, at the same or more CPU:
/// a buffer that stays in the L1 cache between the read that fills it and the write that
/// empties it costs both copies less, and the receiving process's too.
const BUF_SIZE: usize = 16 * 1024;

impl BufPool {
    fn take(&self) -> Box<[u8]> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        pooled.unwrap_or_else(|| {
            self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![0u8; self.size].into_boxed_slice()
        })
    }

    fn put(&self, buf: Box<[u8]>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < BUF_POOL_MAX {
            idle.push(buf);
        }
    }
}

/// How bytes move between two plain TCP sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mover {
    /// `splice(2)` through a pooled pipe: no copy through user space.
    Splice,
    /// `read`/`write` through a pooled buffer.
    Copy,
}

/// When bytes last moved on a relayed connection (either way), for its idle timeout: one
/// relaxed store per transfer.
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Run `relay` to its end, or until nothing has moved either way for `timeout` (zero: no
/// timeout); `None` when it was cut for idleness. The timer wakes once per `timeout` at most.
///
/// A future written out, not an `async fn` with a `select!`: that kept the relay's state twice
/// (as its argument and as the awaited future) and cost every idle proxied TCP connection
/// 1.3 KiB; this adds the timer (112 bytes) and nothing else.
pub(crate) fn with_idle_timeout<F: Future>(
    relay: F,
    activity: &Activity,
    timeout: Duration,
) -> IdleCut<'_, F> {
    IdleCut {
        relay,
        sleep: (!timeout.is_zero()).then(|| tokio::time::sleep(timeout)),
        activity,
        timeout,
    }
}

pin_project_lite::pin_project! {
    /// See [`with_idle_timeout`].
    pub(crate) struct IdleCut<'a, F> {
        #[pin]
        relay: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        activity: &'a Activity,
        timeout: Duration,
    }
}

impl<F: Future> Future for IdleCut<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.relay.poll(cx) {
            return Poll::Ready(Some(out));
        }
        while let Some(mut sleep) = this.sleep.as_mut().as_pin_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let idle = this.activity.idle_for();
            if idle >= *this.timeout {
                return Poll::Ready(None);
            }
            // Bytes moved since: sleep again for what is left of the timeout.
            let left = *this.timeout - idle;
            sleep.reset(tokio::time::Instant::now() + left);
        }
        Poll::Pending
    }
}

/// Copy both ways until both sides have closed. An end of stream one way is passed on as a
/// half-close (`shutdown(SHUT_WR)`) and the other way goes on; an error either way ends both.
pub(crate) async fn bidirectional(
    client: &TcpStream,
    upstream: &TcpStream,
    pools: (&PipePool, &BufPool),
    mover: Mover,
    metrics: &AppMetrics,
    activity: &Activity,
) -> io::Result<()> {
    let one_way = |from, to, direction| async move {
        let count = |n| {
            metrics.add_bytes(direction, n);
            activity.touch();
        };
        match mover {
            Mover::Splice => pump(from, to, pools.0, count).await,
            Mover::Copy => pump_copy(from, to, pools.1, count).await,
        }
    };
    let inbound = async {
        one_way(client, upstream, Direction::In).await?;
        let _ = socket2::SockRef::from(upstream).shutdown(Shutdown::Write);
        Ok::<_, io::Error>(())
    };
    let outbound = async {
        one_way(upstream, client, Direction::Out).await?;
        let _ = socket2::SockRef::from(client).shutdown(Shutdown::Write);
        Ok::<_, io::Error>(())
    };
    tokio::try_join!(inbound, outbound).map(|_| ())
}

/// One direction through a pooled buffer, until end of stream.
async fn pump_copy(
    from: &TcpStream,
    to: &TcpStream,
    pool: &BufPool,
    count: impl Fn(u64),
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = pool.take();
        // One read. A short one means the socket had nothing more (a TCP receive gives what is
        // queued, up to the room), so the readiness is cleared with it: the next wait needs no
        // read that returns EAGAIN (one more syscall per chunk, two per request and answer of
        // a database or cache client; HAProxy reads so too). A full buffer reads on after it
        // is written.
        let mut n = 0;
        let read = from.try_io(Interest::READABLE, || {
            let m = recv(from.as_raw_fd(), &mut buf)?;
            n = m;
            match m > 0 && m < buf.len() {
                true => Err(io::ErrorKind::WouldBlock.into()),
                false => Ok(m),
            }
        });
        match read {
            Ok(0) => {
                pool.put(buf);
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool.put(buf);
                continue;
            }
            Err(e) => return Err(e),
        }
        let mut written = 0;
        while written < n {
            to.writable().await?;
            match to.try_write(&buf[written..n]) {
                Ok(m) => written += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        count(n as u64);
        pool.put(buf);
    }
}

/// One direction, until end of stream.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pool: &PipePool,
    count: impl Fn(u64),
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let pipe = pool.take()?;
        // As in `pump_copy`: a short splice into the empty pipe drained the socket, and clears
        // its readiness with it.
        let mut n = 0;
        let filled = from.try_io(Interest::READABLE, || {
            let m = splice(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE)?;
            n = m;
            match m > 0 && m < PIPE_SIZE {
                true => Err(io::ErrorKind::WouldBlock.into()),
                false => Ok(m),
            }
        });
        match filled {
            Ok(0) => {
                pool.put(pipe);
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool.put(pipe);
                continue;
            }
            Err(e) => return Err(e),
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The pipe still holds data: it is closed with `pipe`, not pooled.
                Err(e) => return Err(e),
            }
        }
        count(n as u64);
        pool.put(pipe);
    }
}

/// Copy both ways between two byte streams of any kind (TLS on either side: TCP backhaul)
/// until both directions have ended, each end passed on as a shutdown. Like
/// `tokio::io::copy_bidirectional`, except that a direction holds a buffer from `pool` only
/// while it has bytes read and not yet written: an idle connection holds none. Returns the
/// bytes moved (a to b, b to a).
pub(crate) async fn copy_pooled<A, B>(
    a: &mut A,
    b: &mut B,
    pool: &BufPool,
    activity: &Activity,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (Half::default(), Half::default());
    std::future::poll_fn(|cx| {
        let moved = ab.moved + ba.moved;
        let a_to_b = ab.poll_copy(cx, pool, &mut *a, &mut *b)?;
        let b_to_a = ba.poll_copy(cx, pool, &mut *b, &mut *a)?;
        if ab.moved + ba.moved != moved {
            activity.touch();
        }
        if a_to_b.is_ready() && b_to_a.is_ready() {
            Poll::Ready(Ok((ab.moved, ba.moved)))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction of [`copy_pooled`].
#[derive(Default)]
struct Half {
    /// Bytes read and not yet all written, in `buf[pos..end]`.
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    read_done: bool,
    /// Written since the last flush (a TLS writer keeps the last record until flushed).
    unflushed: bool,
    done: bool,
    moved: u64,
}

impl Half {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        pool: &BufPool,
        from: &mut R,
        to: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.buf.is_none() && !self.read_done {
                let mut buf = pool.take();
                let mut read = ReadBuf::new(&mut buf);
                match Pin::new(&mut *from).poll_read(cx, &mut read) {
                    Poll::Pending => {
                        // Nothing to hold while the read waits: the buffer goes back, and what
                        // was written goes out.
                        pool.put(buf);
                        if self.unflushed {
                            ready!(Pin::new(&mut *to).poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        pool.put(buf);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.read_done = true;
                            pool.put(buf);
                        } else {
                            (self.pos, self.end) = (0, n);
                            self.buf = Some(buf);
                        }
                    }
                }
            }
            if let Some(buf) = &self.buf {
                while self.pos < self.end {
                    let n = ready!(Pin::new(&mut *to).poll_write(cx, &buf[self.pos..self.end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.pos += n;
                    self.moved += n as u64;
                    self.unflushed = true;
                }
                if let Some(buf) = self.buf.take() {
                    pool.put(buf);
                }
            }
            if self.read_done {
                if self.unflushed {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    self.unflushed = false;
                }
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn moves_bytes_both_ways_and_passes_half_close() {
        for mover in [Mover::Splice, Mover::Copy] {
            let (mut client, proxy_client_side) = pair().await;
            let (proxy_upstream_side, mut server) = pair().await;
            let (pipes, bufs) = (PipePool::default(), BufPool::default());
            let metrics = AppMetrics::default();
            let relay = async {
                bidirectional(
                    &proxy_client_side,
                    &proxy_upstream_side,
                    (&pipes, &bufs),
                    mover,
                    &metrics,
                    &Activity::new(),
                )
                .await
            };
            let peers = async {
                let big = vec![7u8; 3 * 1024 * 1024];
                client.write_all(&big).await.expect("write");
                client.shutdown().await.expect("shutdown");
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.expect("server read");
                assert_eq!(got.len(), big.len());
                server
                    .write_all(b"reply after half-close")
                    .await
                    .expect("server write");
                server.shutdown().await.expect("server shutdown");
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.expect("client read");
                assert_eq!(back, b"reply after half-close");
            };
            let (res, ()) = tokio::join!(relay, peers);
            res.expect("relay");
            assert_eq!(metrics_bytes(&metrics), (3 * 1024 * 1024, 22), "{mover:?}");
        }
    }

    fn metrics_bytes(m: &AppMetrics) -> (u64, u64) {
        (m.bytes(Direction::In), m.bytes(Direction::Out))
    }

    /// Write `send` and read `expect` bytes at the same time.
    async fn exchange(io: &mut tokio::io::DuplexStream, send: &[u8], expect: usize) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(io);
        let mut got = vec![0u8; expect];
        let (wrote, read) = tokio::join!(w.write_all(send), r.read_exact(&mut got));
        wrote.expect("write");
        read.expect("read");
        got
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    }

    /// Both ways at once, many buffers' worth, then each side's end passed on; between bursts
    /// the relay holds no buffer.
    #[tokio::test]
    async fn copy_pooled_moves_both_ways_and_holds_no_buffer_while_idle() {
        let pool = Arc::new(BufPool::default());
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        let (mut b, mut server) = tokio::io::duplex(64 * 1024);
        let relay = {
            let pool = pool.clone();
            tokio::spawn(async move { copy_pooled(&mut a, &mut b, &pool, &Activity::new()).await })
        };
        let up = pattern(1 << 20, 1);
        let down = pattern(1 << 20, 2);
        for _ in 0..2 {
            // Each end writes and reads at once, as a real peer may.
            let (down_got, up_got) = tokio::join!(
                exchange(&mut client, &up, down.len()),
                exchange(&mut server, &down, up.len()),
            );
            assert!(up_got == up && down_got == down, "bytes changed on the way");
            // Idle: every buffer made is back in the pool.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let idle = pool.idle.lock().expect("pool").len();
                if idle == pool.made.load(Ordering::Relaxed) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a buffer is still held"
                );
                tokio::task::yield_now().await;
            }
            assert!(pool.made.load(Ordering::Relaxed) >= 1);
        }
        // The client's end reaches the server; the other way still flows.
        client.shutdown().await.expect("client shuts down");
        let mut rest = Vec::new();
        server
            .read_to_end(&mut rest)
            .await
            .expect("server reads the end");
        assert!(rest.is_empty());
        server
            .write_all(b"after the half-close")
            .await
            .expect("write");
        server.shutdown().await.expect("server shuts down");
        let mut tail = Vec::new();
        client
            .read_to_end(&mut tail)
            .await
            .expect("client reads the end");
        assert_eq!(tail, b"after the half-close");
        let moved = relay.await.expect("relay task").expect("relay");
        let n = 2 * (1u64 << 20);
        assert_eq!(moved, (n, n + 20));
    }
}
