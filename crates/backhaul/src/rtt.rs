//! The round-trip time the kernel measured for a TCP socket (`TCP_INFO`): how an edge learns
//! its distance to a worker from the worker's backhaul connections.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Smoothed RTT the kernel measured for this TCP socket (`TCP_INFO` `tcpi_rtt`), `None` if it
/// is unavailable: not a TCP socket, not Linux, or no sample yet (the kernel reports 0).
pub fn tcp_rtt(sock: &impl AsFd) -> Option<Duration> {
    let micros = tcpi_rtt(sock)?;
    (micros > 0).then(|| Duration::from_micros(u64::from(micros)))
}

#[cfg(target_os = "linux")]
fn tcpi_rtt(sock: &impl AsFd) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain integers, so all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is borrowed for the call; `info` and `len` are valid for writes and `len`
    // is the size of `info`, so the kernel writes at most that many bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // An older kernel may fill less than the whole struct; tcpi_rtt must be in what it filled.
    let rtt_end = std::mem::offset_of!(libc::tcp_info, tcpi_rtt) + std::mem::size_of::<u32>();
    (rc == 0 && len as usize >= rtt_end).then_some(info.tcpi_rtt)
}

#[cfg(not(target_os = "linux"))]
fn tcpi_rtt(_sock: &impl AsFd) -> Option<u32> {
    None
}

/// A `TcpStream` that samples its own `TCP_INFO` RTT into a shared cell (microseconds, 0 =
/// unknown) at most once per `every`, while it is read: an edge learns the RTT of each
/// worker's backhaul sockets without another task holding the fd. The cell keeps the last
/// sample; a failed sample leaves it as it was.
pub struct RttSampled {
    stream: TcpStream,
    cell: Arc<AtomicU32>,
    every: Duration,
    last: Option<Instant>,
}

impl std::fmt::Debug for RttSampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RttSampled")
            .field("stream", &self.stream)
            .field("rtt_us", &self.cell.load(Ordering::Relaxed))
            .field("every", &self.every)
            .finish()
    }
}

impl RttSampled {
    pub fn new(stream: TcpStream, cell: Arc<AtomicU32>, every: Duration) -> Self {
        RttSampled {
            stream,
            cell,
            every,
            last: None,
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    pub fn into_inner(self) -> TcpStream {
        self.stream
    }

    fn maybe_sample(&mut self) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            return;
        }
        self.last = Some(now);
        if let Some(rtt) = tcp_rtt(&self.stream) {
            let micros = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1);
            self.cell.store(micros, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for RttSampled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.maybe_sample();
        }
        polled
    }
}

impl AsyncWrite for RttSampled {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
