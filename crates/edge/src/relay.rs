//! Moving bytes between two TCP sockets: `read`/`write` through a pooled buffer (the default), or
//! `splice(2)`: socket -> pipe -> socket, never through user space. Buffers and pipes come from
//! shared pools and are held only while data moves, so an idle connection holds no buffer and no
//! extra descriptor.

use anyedge_telemetry::{AppMetrics, Direction};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};
use tokio::io::Interest;
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
        pooled.unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
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

/// Copy both ways until both sides have closed. An end of stream one way is passed on as a
/// half-close (`shutdown(SHUT_WR)`) and the other way goes on; an error either way ends both.
pub(crate) async fn bidirectional(
    client: &TcpStream,
    upstream: &TcpStream,
    pools: (&PipePool, &BufPool),
    mover: Mover,
    metrics: &AppMetrics,
) -> io::Result<()> {
    let one_way = |from, to, direction| async move {
        let count = |n| metrics.add_bytes(direction, n);
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
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                pool.put(buf);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool.put(buf);
                continue;
            }
            Err(e) => return Err(e),
        };
        // Take what else has arrived meanwhile, so writes are as large as the buffer allows.
        let mut n = n;
        while n < buf.len() {
            match from.try_read(&mut buf[n..]) {
                Ok(m) if m > 0 => n += m,
                _ => break,
            }
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
        let filled = from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE)
        });
        let n = match filled {
            Ok(0) => {
                pool.put(pipe);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool.put(pipe);
                continue;
            }
            Err(e) => return Err(e),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
