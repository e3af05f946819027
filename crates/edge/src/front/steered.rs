//! `[node] steering = "sk_lookup"` (`docs/steering.md`): one listening socket per address
//! family and shard, on loopback at a port of the kernel's choosing, and the kernel's map of
//! steered (address, port)s kept equal to the snapshot's listen addresses by diff. The accept
//! loops are the ordinary ones ([`super::listeners`]), asking each accepted socket its local
//! address: the one the client dialled, by which the connection is routed as with sockets.

use super::listeners::{accept_loop_asking, ListenError};
use crate::routes::ListenAddr;
use crate::sockets::{adopt_or_bind, bind_one, spawn_on_shards, Accepting, HandoverSocket};
use crate::Shared;
use anyedge_core::control::{ListenKey, Role};
use anyedge_steering::{Family, Steering, Target};
use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One family's listeners: a socket per shard, all on one port (`SO_REUSEPORT`); the kernel
/// spreads the connections steered to the first among them as among any reuse-port group.
struct Group {
    local: SocketAddr,
    sockets: Sockets,
}

/// Whether a group's accept loops run. They start with the first [`SteeredSet::apply`], once
/// the node's routes are in force: a connection steered to the sockets before then waits in
/// their accept queue instead of being accepted and closed for want of a route. That matters
/// because the sockets are steered to before this process routes anything: on an upgrade they
/// are the previous process's, which is still serving from them, and on a restart they enter
/// the sockmap as soon as they are opened.
enum Sockets {
    NotAccepting(Vec<std::net::TcpListener>),
    /// Shared with their accept loops (one descriptor each; copied only to hand them over).
    Accepting(Vec<Accepting>),
}

pub(crate) struct SteeredSet {
    steering: Option<Steering>,
    groups: Vec<Group>,
}

impl SteeredSet {
    /// Load the program (or take over the pinned one), open the listeners and steer to them.
    pub fn start(
        config: &anyedge_config::Node,
        shared: &Arc<Shared>,
    ) -> Result<SteeredSet, anyedge_steering::SteerError> {
        let steering = Steering::open(&config.bpf_pin_dir, &config.id)?;
        if steering.taken_over() {
            tracing::info!(dir = %steering.pin_dir().display(), ports = steering.steered().len(), "sk_lookup: took the pinned maps over");
        }
        let shards = shared.shards.len();
        let mut groups = Vec::new();
        for (family, ip) in [
            (Family::V4, IpAddr::V4(Ipv4Addr::LOCALHOST)),
            (Family::V6, IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ] {
            let sockets = match adopt_or_bind_group(family, ip, shards, shared) {
                Ok(s) => s,
                Err(e) if family == Family::V6 => {
                    tracing::warn!(error = %e, "sk_lookup: no IPv6 loopback: IPv6 connections are not steered");
                    continue;
                }
                Err(e) => return Err(steer_io("cannot open the steering listener", e)),
            };
            let first = sockets.first().map(|s| s.as_fd());
            if let Some(fd) = first {
                steering
                    .set_listener(family, fd)
                    .map_err(|e| steer_io("cannot put the listener in the sockmap", e))?;
            }
            let local = sockets
                .first()
                .and_then(|s| s.local_addr().ok())
                .unwrap_or(SocketAddr::new(ip, 0));
            shared
                .metrics
                .node
                .listeners
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%local, "sk_lookup: listening");
            groups.push(Group {
                local,
                sockets: Sockets::NotAccepting(sockets),
            });
        }
        let set = SteeredSet {
            steering: Some(steering),
            groups,
        };
        set.count(shared);
        Ok(set)
    }

    /// Make the kernel's map steer exactly `wanted`: only the differences are written, so a
    /// reload costs what it changes; open connections are untouched. The first call starts
    /// the accept loops: the caller has put the routes in force by then.
    pub fn apply(
        &mut self,
        wanted: &BTreeSet<ListenAddr>,
        shared: &Arc<Shared>,
    ) -> Vec<ListenError> {
        for group in &mut self.groups {
            if let Sockets::NotAccepting(sockets) = &mut group.sockets {
                let sockets = std::mem::take(sockets);
                let accepting = spawn_on_shards(sockets, shared, accept_loop_asking);
                group.sockets = Sockets::Accepting(accepting);
            }
        }
        let Some(steering) = self.steering.as_mut() else {
            return Vec::new();
        };
        let wanted: BTreeSet<Target> = wanted.iter().map(|a| target(*a)).collect();
        let changes = steering.apply(&wanted);
        let m = &shared.metrics.node;
        let written = (changes.added + changes.removed) as u64;
        m.steering_map_updates.fetch_add(written, Ordering::Relaxed);
        if changes.added + changes.removed > 0 {
            tracing::info!(
                added = changes.added,
                removed = changes.removed,
                steered = steering.steered().len(),
                "sk_lookup: ports map updated"
            );
        }
        self.count(shared);
        changes
            .failed
            .into_iter()
            .map(|(t, source)| {
                m.steering_failures.fetch_add(1, Ordering::Relaxed);
                m.listener_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target = %t, error = %source, "sk_lookup: map update failed");
                ListenError {
                    addr: t.to_string(),
                    source,
                }
            })
            .collect()
    }

    fn count(&self, shared: &Shared) {
        let n = self.steering.as_ref().map_or(0, |s| s.steered().len());
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        shared
            .metrics
            .node
            .steered_ports
            .store(n, Ordering::Relaxed);
    }

    /// Stop accepting. Unless told to keep it (another process took over and runs the same
    /// pinned link and maps now, or this one failed to start), detach the program: nothing is
    /// steered any more.
    pub fn close_all(&mut self, shared: &Shared, keep_steering: bool) {
        let n = self.groups.len() as i64;
        self.groups.clear();
        shared
            .metrics
            .node
            .listeners
            .fetch_sub(n, Ordering::Relaxed);
        let Some(steering) = self.steering.take() else {
            return;
        };
        if keep_steering {
            return;
        }
        match steering.detach() {
            Ok(()) => tracing::info!("sk_lookup: detached"),
            Err(e) => {
                shared
                    .metrics
                    .node
                    .steering_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "sk_lookup: cannot detach");
            }
        }
        shared
            .metrics
            .node
            .steered_ports
            .store(0, Ordering::Relaxed);
    }

    /// The listening sockets' own addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.groups.iter().map(|g| g.local).collect()
    }

    /// The listeners' sockets, by their own address (`anyedge run --upgrade`: the new process
    /// steers to the same sockets, so nothing in their accept queues is lost). Before the
    /// accept loops run (an upgrade asked for while this node starts), copies.
    pub fn handover(&self) -> io::Result<Vec<(SocketAddr, Vec<HandoverSocket>)>> {
        self.groups
            .iter()
            .map(|g| {
                let fds = match &g.sockets {
                    Sockets::NotAccepting(sockets) => sockets
                        .iter()
                        .map(|s| s.as_fd().try_clone_to_owned().map(HandoverSocket::Copy))
                        .collect::<io::Result<Vec<_>>>()?,
                    Sockets::Accepting(accepting) => Accepting::handover(accepting),
                };
                Ok((g.local, fds))
            })
            .collect()
    }
}

/// The listeners of `family`: those the previous process handed over (`Role::Steering`),
/// joined by fresh ones on their port until every shard has one; else a new group.
fn adopt_or_bind_group(
    family: Family,
    ip: IpAddr,
    shards: usize,
    shared: &Shared,
) -> io::Result<Vec<std::net::TcpListener>> {
    let inherited = shared.inherited.take_where(
        Role::Steering,
        |k| matches!(k, ListenKey::Addr(a) if a.is_ipv4() == (family == Family::V4)),
    );
    match inherited {
        Some((ListenKey::Addr(at), fds)) => {
            tracing::info!(%at, sockets = fds.len(), "sk_lookup: adopting the listeners handed over");
            adopt_or_bind(Some(fds), shards.max(1), || bind_one(at, false))
        }
        _ => bind_group(ip, shards),
    }
}

/// A snapshot's listen address as the kernel's map names it. A bind to an unspecified
/// address (`0.0.0.0`, `::`) is the port on every address.
fn target(addr: ListenAddr) -> Target {
    match addr {
        ListenAddr::Any(port) => Target { addr: None, port },
        ListenAddr::One(a) => Target {
            addr: Some(a.ip().to_canonical()).filter(|ip| !ip.is_unspecified()),
            port: a.port(),
        },
    }
}

/// A socket per shard on `ip`, at one port the kernel picks for the first.
fn bind_group(ip: IpAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(SocketAddr::new(ip, 0), false)?;
    let at = first.local_addr()?;
    let mut sockets = vec![first];
    while sockets.len() < shards.max(1) {
        sockets.push(bind_one(at, false)?);
    }
    Ok(sockets)
}

fn steer_io(what: &str, source: io::Error) -> anyedge_steering::SteerError {
    anyedge_steering::SteerError::Io {
        what: what.to_string(),
        source,
    }
}
