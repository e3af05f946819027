//! Listening sockets and accept loops shared by every role's listener (the client-facing ports
//! and the worker's backhaul port): `SO_REUSEPORT` sockets, one per shard, each accepting on
//! its shard's runtime; accept errors counted, with a back-off when descriptors run out. A
//! socket handed over by the previous process (`anyedge run --upgrade`) is adopted as it is:
//! never closed and bound again, so the connections in its accept queue are served.

use crate::Shared;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Back-off after accept() fails for lack of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One shard's listening socket as the node holds it: shared with its accept loop, which
/// accepts from it, while the node hands it over by that same descriptor
/// ([`Accepting::handover`]: no copy). So a listener costs one descriptor, not two: 10,000 ports on
/// two shards are 20,000 descriptors, not 40,000. Dropping it stops the loop; the socket
/// closes when both have let it go (in this process: another may hold it too).
pub(crate) struct Accepting {
    listener: Arc<TcpListener>,
    _stop: oneshot::Sender<()>,
}

impl Accepting {
    /// `accepting`'s sockets, for the process taking over.
    pub(crate) fn handover(accepting: &[Accepting]) -> Vec<HandoverSocket> {
        accepting
            .iter()
            .map(|a| HandoverSocket::Shared(a.listener.clone()))
            .collect()
    }
}

/// A listening socket to hand over (`anyedge run --upgrade`), sent by its descriptor: the
/// accept loop's own, kept open by this handle even if a reload closes the listener
/// meanwhile, or a copy where the node holds the socket otherwise. Handing 20,000 listeners
/// over costs no descriptor beyond them.
pub enum HandoverSocket {
    Shared(Arc<TcpListener>),
    Copy(OwnedFd),
}

impl AsFd for HandoverSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            HandoverSocket::Shared(l) => l.as_fd(),
            HandoverSocket::Copy(fd) => fd.as_fd(),
        }
    }
}

/// Run `accept` on each socket, one per shard on that shard's runtime (more sockets than
/// shards, as a previous process with more cores hands over: round the shards again); each
/// stops when its [`Accepting`] is dropped. A socket the shard's reactor cannot register
/// (out of memory) is logged and closed.
pub(crate) fn spawn_on_shards<F, Fut>(
    sockets: Vec<std::net::TcpListener>,
    shared: &Arc<Shared>,
    accept: F,
) -> Vec<Accepting>
where
    F: Fn(Arc<TcpListener>, oneshot::Receiver<()>, Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut accepting = Vec::with_capacity(sockets.len());
    for (socket, shard) in sockets.into_iter().zip(shared.shards.iter().cycle()) {
        let (stop, stopped) = oneshot::channel();
        // Registered with the shard's reactor: from_std needs its context.
        let _entered = shard.enter();
        match TcpListener::from_std(socket) {
            Ok(l) => {
                let listener = Arc::new(l);
                let running = shared.accept_loops.track();
                let serve = accept(listener.clone(), stopped, shared.clone());
                shard.spawn(async move {
                    let _running = running;
                    serve.await
                });
                accepting.push(Accepting {
                    listener,
                    _stop: stop,
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot register listener"),
        }
    }
    accepting
}

pub(crate) fn bind_one(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Set once here, inherited by every accepted connection (Linux copies them from the
    // listener): no setsockopt calls per accept.
    let _ = socket.set_nodelay(true);
    let _ = socket.set_tcp_keepalive(&keep_alive_params());
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Listening sockets for `addr`: those handed over for it first (all of them: each holds its
/// own accept queue), then fresh ones joining them (`SO_REUSEPORT`) until every shard has one.
/// `bind` makes a fresh socket for an address.
pub(crate) fn adopt_or_bind(
    inherited: Option<Vec<OwnedFd>>,
    shards: usize,
    bind: impl Fn() -> io::Result<std::net::TcpListener>,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(shards);
    for fd in inherited.unwrap_or_default() {
        sockets.push(adopt(fd)?);
    }
    while sockets.len() < shards {
        sockets.push(bind()?);
    }
    Ok(sockets)
}

/// A socket received from the previous process, checked to be a listening TCP socket.
pub fn adopt(fd: OwnedFd) -> io::Result<std::net::TcpListener> {
    let socket = Socket::from(fd);
    let listening = socket.is_listener()?;
    let tcp = socket.r#type()? == Type::STREAM && socket.local_addr()?.as_socket().is_some();
    if !listening || !tcp {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a handed-over descriptor is not a listening TCP socket",
        ));
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The next accepted connection; `None` once the listener is stopped or the node drains.
pub(crate) async fn next(
    listener: &TcpListener,
    stop: &mut oneshot::Receiver<()>,
    shared: &Shared,
) -> Option<io::Result<(TcpStream, SocketAddr)>> {
    // Biased: once stopped or draining, no further accept, even with connections waiting
    // (the process taking over, or none, has them).
    tokio::select! {
        biased;
        _ = stop => None,
        _ = shared.drain.started() => None,
        accepted = listener.accept() => Some(accepted),
    }
}

/// Count a failed accept; out of descriptors or memory, back off before the next.
pub(crate) async fn accept_failed(e: &io::Error, shared: &Shared) {
    shared
        .metrics
        .node
        .accept_errors
        .fetch_add(1, Ordering::Relaxed);
    if is_resource_exhaustion(e) {
        tracing::warn!(error = %e, "accept failed; backing off");
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    } else {
        // ECONNABORTED and the like concern one connection, not the listener.
        tracing::debug!(error = %e, "accept failed");
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// TCP keep-alive on a connection to a client, a worker or an instance: a peer that vanished
/// without a FIN or RST (a dead host, a dropped NAT mapping) is found after about two minutes
/// of silence (60 s idle, then 6 probes 10 s apart) instead of holding its slots until the
/// kernel's default of over two hours. A socket that refuses the option keeps working without.
/// Accepted connections inherit it from their listener ([`bind_one`]); connections the node
/// makes get it here.
pub(crate) fn keep_alive(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keep_alive_params());
}

fn keep_alive_params() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyedge_core::Drain;
    use anyedge_telemetry::Metrics;

    /// Once the node drains, an accept loop takes no further connection even with some
    /// waiting: what it accepted after the drain's count would go unserved when the process
    /// exits (they wait for the process that took the sockets over, or are refused with them).
    /// Twenty tries: an unbiased choice between "draining" and "a connection waits" would
    /// accept at least one with probability 1 - 2^-20.
    #[tokio::test]
    async fn a_draining_accept_loop_takes_nothing_more() {
        let edge = crate::Edge::new(
            Metrics::new(),
            Drain::new(),
            &anyedge_config::Limits::default(),
            Vec::new(),
        )
        .expect("edge");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Each connect returns once the handshake is done: the connection is in the queue.
        let clients: Vec<_> = (0..21)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let (_stop, mut stopped) = oneshot::channel();
        // One accepted before the drain: the listener is known to be ready from then on.
        let first = next(&listener, &mut stopped, &edge.shared).await;
        assert!(matches!(first, Some(Ok(_))), "{first:?}");
        edge.shared.drain.start();
        for _ in 1..clients.len() {
            let after = next(&listener, &mut stopped, &edge.shared).await;
            assert!(after.is_none(), "accepted while draining: {after:?}");
        }
    }
}
