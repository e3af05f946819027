//! The control socket (`[node] control_socket`): an owner-only Unix socket where a running node
//! hands its listening sockets to the process replacing it (`anyedge run --upgrade`), then
//! drains. The exchange, from the new process's side ([`take_over`], [`Upgrade::finish`]):
//!
//! 1. `HANDOVER`; the old node answers `STATE` (its process generation, TLS ticket keys),
//!    `SOCKETS` with every listening socket (app ports, admin, backhaul; each shard's) as
//!    `SCM_RIGHTS`, and `END`. It goes on accepting on them meanwhile.
//! 2. The new process starts serving on them (binding what its config has and the old one did
//!    not, closing what its config no longer has), puts its own control socket at the path,
//!    and sends `DRAIN`; the old one answers `OK`, stops accepting and drains.
//!
//! If the new process fails before step 2 (a bad config, a port it cannot open), it never
//! sends `DRAIN`: the old node notices the closed connection and goes on serving.

pub mod systemd;
mod wire;

use crate::node::Node;
use anyedge_core::control::{Inherited, Listener, Message, MAX_FDS};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Bound on each step of the exchange but the wait for `DRAIN`.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old node waits for the new process to start serving and send `DRAIN` (a new
/// node on the etcd store waits up to 5 s for its first listing).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Why `anyedge run --upgrade` could not take over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot reach the running node's control socket {path}: {source} (is a node running with this [node] control_socket?)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the running node refused the hand-over: {0}")]
    Refused(String),
    #[error("the hand-over broke off: {0}")]
    Exchange(io::Error),
    #[error("the running node sent {0} where the hand-over expected something else")]
    Unexpected(&'static str),
}

/// What the previous process handed over, and the connection to it (to tell it to drain).
pub struct Upgrade {
    conn: Socket,
    /// The previous process's generation.
    pub generation: u64,
    pub tickets: Vec<u8>,
    pub sockets: Arc<Inherited>,
}

/// Connect to the node answering on `path` and receive its listening sockets.
pub fn take_over(path: &Path) -> Result<Upgrade, UpgradeError> {
    let connect = || -> io::Result<Socket> {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        socket.set_read_timeout(Some(STEP_TIMEOUT))?;
        socket.set_write_timeout(Some(STEP_TIMEOUT))?;
        socket.connect(&SockAddr::unix(path)?)?;
        Ok(socket)
    };
    let conn = connect().map_err(|source| UpgradeError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    wire::send(&conn, &Message::Handover, &[]).map_err(UpgradeError::Exchange)?;
    let (generation, tickets) = match next(&conn)? {
        (
            Message::State {
                generation,
                tickets,
            },
            _,
        ) => (generation, tickets),
        (other, _) => return Err(unexpected(other)),
    };
    let sockets = Arc::new(Inherited::default());
    loop {
        match next(&conn)? {
            (Message::Sockets(listeners), fds) => {
                let mut fds = fds.into_iter();
                for l in listeners {
                    sockets.insert(l.role, l.key, fds.by_ref().take(l.count).collect());
                }
            }
            (Message::End, _) => break,
            (other, _) => return Err(unexpected(other)),
        }
    }
    Ok(Upgrade {
        conn,
        generation,
        tickets,
        sockets,
    })
}

fn next(conn: &Socket) -> Result<(Message, Vec<OwnedFd>), UpgradeError> {
    let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "the running node closed");
    wire::recv(conn)
        .and_then(|m| m.ok_or_else(eof))
        .map_err(UpgradeError::Exchange)
}

fn unexpected(m: Message) -> UpgradeError {
    match m {
        Message::Error(lines) => UpgradeError::Refused(lines.join("; ")),
        Message::Handover => UpgradeError::Unexpected("HANDOVER"),
        Message::State { .. } => UpgradeError::Unexpected("STATE"),
        Message::Sockets(_) => UpgradeError::Unexpected("SOCKETS"),
        Message::End => UpgradeError::Unexpected("END"),
        Message::Drain => UpgradeError::Unexpected("DRAIN"),
        Message::Status => UpgradeError::Unexpected("STATUS"),
        Message::Ok(_) => UpgradeError::Unexpected("OK"),
    }
}

impl Upgrade {
    /// The new node serves: put its control socket at `path` (in place of the old one's), then
    /// tell the old node to drain. A failure to listen is logged (the node serves without a
    /// control socket); an old node that does not confirm is logged too (it may have gone).
    pub fn finish(
        self,
        path: &Path,
        node: Arc<Node>,
        drain: UnboundedSender<()>,
    ) -> Option<ControlServer> {
        let server = ControlServer::start(path, node, drain)
            .inspect_err(|e| tracing::error!(path = %path.display(), error = %e, "cannot listen on the control socket"))
            .ok();
        let confirmed = wire::send(&self.conn, &Message::Drain, &[])
            .map_err(UpgradeError::Exchange)
            .and_then(|()| next(&self.conn));
        match confirmed {
            Ok((Message::Ok(_), _)) => {
                tracing::info!(
                    previous_generation = self.generation,
                    "upgrade: serving; the previous process drains"
                )
            }
            Ok((other, _)) => {
                tracing::error!(error = %unexpected(other), "upgrade: the previous process did not confirm its drain; stop it with SIGTERM")
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade: the previous process did not confirm its drain; stop it with SIGTERM")
            }
        }
        server
    }
}

/// `STATUS` on the control socket at `path`: the answering node's pid and process generation.
pub fn status(path: &Path) -> Option<(u32, u64)> {
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).ok()?;
    socket.set_read_timeout(Some(STEP_TIMEOUT)).ok()?;
    socket.set_write_timeout(Some(STEP_TIMEOUT)).ok()?;
    socket.connect(&SockAddr::unix(path).ok()?).ok()?;
    wire::send(&socket, &Message::Status, &[]).ok()?;
    let Some((Message::Ok(lines), _)) = wire::recv(&socket).ok()? else {
        return None;
    };
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name)?.parse::<u64>().ok())
    };
    Some((u32::try_from(field("pid ")?).ok()?, field("generation ")?))
}

/// Whether a node answers on `path` (a plain start must not take its control socket).
pub fn in_use(path: &Path) -> bool {
    let Ok(socket) = Socket::new(Domain::UNIX, Type::SEQPACKET, None) else {
        return false;
    };
    SockAddr::unix(path).is_ok_and(|addr| socket.connect(&addr).is_ok())
}

/// The listening control socket and the thread answering on it.
pub struct ControlServer {
    path: PathBuf,
    socket: Arc<Socket>,
    /// The socket file's inode: removed on exit only if it is still ours (a new process has
    /// put its own at the path after an upgrade).
    ino: u64,
    stopping: Arc<AtomicBool>,
}

impl ControlServer {
    /// Listen on `path` (mode 0600, put in place by a rename, so the path always leads to a
    /// live node) and answer there on a thread of its own.
    pub fn start(
        path: &Path,
        node: Arc<Node>,
        drain: UnboundedSender<()>,
    ) -> io::Result<ControlServer> {
        let mut fresh = path.as_os_str().to_owned();
        fresh.push(".new");
        let fresh = PathBuf::from(fresh);
        let _ = std::fs::remove_file(&fresh);
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        socket.bind(&SockAddr::unix(&fresh)?)?;
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))?;
        socket.listen(16)?;
        std::fs::rename(&fresh, path)?;
        let ino = std::fs::metadata(path)?.ino();
        let socket = Arc::new(socket);
        let stopping = Arc::new(AtomicBool::new(false));
        let (s, stop) = (socket.clone(), stopping.clone());
        std::thread::Builder::new()
            .name("anyedge-control".into())
            .spawn(move || accept_loop(&s, &stop, &node, &drain))?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlServer {
            path: path.to_path_buf(),
            socket,
            ino,
            stopping,
        })
    }

    /// Stop answering; remove the socket file if it is still this node's.
    pub fn close(self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the thread out of accept().
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn accept_loop(socket: &Socket, stopping: &AtomicBool, node: &Node, drain: &UnboundedSender<()>) {
    while !stopping.load(Ordering::SeqCst) {
        let conn = match socket.accept() {
            Ok((conn, _)) => conn,
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if answer(&conn, node) == Outcome::Drain {
            let _ = drain.send(());
            return;
        }
    }
}

#[derive(PartialEq)]
enum Outcome {
    Done,
    /// The new process serves: drain.
    Drain,
}

/// Answer one connection. Every failure ends the connection, never the node.
fn answer(conn: &Socket, node: &Node) -> Outcome {
    if !same_user(conn) {
        tracing::warn!("control socket: a peer of another user was refused");
        let _ = reply_error(conn, "refused: not this node's user");
        return Outcome::Done;
    }
    let _ = conn.set_read_timeout(Some(STEP_TIMEOUT));
    let _ = conn.set_write_timeout(Some(STEP_TIMEOUT));
    match wire::recv(conn) {
        Ok(Some((Message::Handover, _))) => hand_over(conn, node),
        Ok(Some((Message::Status, _))) => {
            let m = node.metrics();
            let generation = m.node.process_generation.load(Ordering::Relaxed);
            let lines = vec![
                format!("pid {}", std::process::id()),
                format!("generation {generation}"),
            ];
            let _ = wire::send(conn, &Message::Ok(lines), &[]);
            Outcome::Done
        }
        Ok(Some((other, _))) => {
            let _ = reply_error(conn, &format!("unexpected message: {other:?}"));
            Outcome::Done
        }
        Ok(None) => Outcome::Done,
        Err(e) => {
            tracing::warn!(error = %e, "control socket: a bad message was refused");
            let _ = reply_error(conn, &e.to_string());
            Outcome::Done
        }
    }
}

fn reply_error(conn: &Socket, why: &str) -> io::Result<()> {
    wire::send(conn, &Message::Error(vec![why.to_string()]), &[])
}

/// Send every listening socket, then wait for the new process to serve and say `DRAIN`.
fn hand_over(conn: &Socket, node: &Node) -> Outcome {
    let sent = send_sockets(conn, node);
    if let Err(e) = sent {
        tracing::error!(error = %e, "upgrade: the hand-over failed; still serving");
        let _ = reply_error(conn, &e.to_string());
        return Outcome::Done;
    }
    tracing::info!("upgrade: listening sockets handed over; waiting for the new process");
    let _ = conn.set_read_timeout(Some(START_TIMEOUT));
    match wire::recv(conn) {
        Ok(Some((Message::Drain, _))) => {
            let _ = wire::send(conn, &Message::Ok(Vec::new()), &[]);
            tracing::info!("upgrade: the new process serves; draining");
            Outcome::Drain
        }
        Ok(None) => {
            tracing::warn!("upgrade: the new process went away before serving; still serving");
            Outcome::Done
        }
        Ok(Some((other, _))) => {
            let _ = reply_error(conn, &format!("expected DRAIN, not {other:?}"));
            Outcome::Done
        }
        Err(e) => {
            tracing::warn!(error = %e, "upgrade: no DRAIN from the new process; still serving");
            Outcome::Done
        }
    }
}

fn send_sockets(conn: &Socket, node: &Node) -> io::Result<()> {
    let state = Message::State {
        generation: node
            .metrics()
            .node
            .process_generation
            .load(Ordering::Relaxed),
        tickets: node.ticket_keys(),
    };
    wire::send(conn, &state, &[])?;
    let mut batch: Vec<Listener> = Vec::new();
    // Sent by the descriptors the node holds: 20,000 listeners cost no descriptor more.
    let all = node.handover_sockets()?;
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    for (role, key, sockets) in &all {
        for chunk in sockets.chunks(MAX_FDS) {
            if fds.len() + chunk.len() > MAX_FDS {
                flush(conn, &mut batch, &mut fds)?;
            }
            batch.push(Listener {
                role: *role,
                key: *key,
                count: chunk.len(),
            });
            fds.extend(chunk.iter().map(AsFd::as_fd));
        }
    }
    flush(conn, &mut batch, &mut fds)?;
    wire::send(conn, &Message::End, &[])
}

fn flush(
    conn: &Socket,
    batch: &mut Vec<Listener>,
    fds: &mut Vec<BorrowedFd<'_>>,
) -> io::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    wire::send(conn, &Message::Sockets(std::mem::take(batch)), fds)?;
    fds.clear();
    Ok(())
}

/// The peer runs as this process's user (or root): the file mode is the first guard, this
/// the second.
fn same_user(conn: &Socket) -> bool {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    r == 0 && (cred.uid == me || cred.uid == 0)
}
