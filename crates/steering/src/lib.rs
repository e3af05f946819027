//! `sk_lookup` steering (`[node] steering = "sk_lookup"`, `docs/steering.md`): a BPF program
//! attached to the network namespace hands every TCP connection for a configured (address,
//! port) to one listening socket per address family, whatever port that socket is bound to.
//! The node then routes the connection by its local address, exactly as with one socket per
//! port. The program is assembled in Rust ([`program`]) and loaded with raw `bpf(2)` calls
//! ([`sys`]): no clang at build time, no aya or libbpf-rs (not in the offline registry).
//!
//! Two maps, pinned under `<bpf_pin_dir>/<node id>/` with the link, so a restarted or
//! upgraded node takes them over: `ports` ([`Target`] -> 0) and `listeners` (slot 0: the
//! IPv4 socket, 1: the IPv6 one). A crashed node leaves the link attached, but its sockets
//! leave the sockmap as they close: the program then passes, and connections are refused as
//! if nothing listened.

mod asm;
mod check;
pub mod netns;
mod program;
mod sys;

pub use check::{problems, Problem};

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// One steered (address, port): `addr` `None` is the port on every address of both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub addr: Option<IpAddr>,
    pub port: u16,
}

const KEY_SIZE: usize = 20;
/// Room for every port on many addresses; entries are allocated as added
/// (`BPF_F_NO_PREALLOC`), so the bound costs nothing until used.
const MAX_TARGETS: u32 = 1 << 20;
const BPF_F_NO_PREALLOC: u32 = 1;

impl Target {
    fn key(&self) -> [u8; KEY_SIZE] {
        let mut k = [0u8; KEY_SIZE];
        let addr = match self.addr {
            None => [0; 16],
            Some(IpAddr::V4(a)) => a.to_ipv6_mapped().octets(),
            Some(IpAddr::V6(a)) => a.octets(),
        };
        k[..16].copy_from_slice(&addr);
        k[16..].copy_from_slice(&u32::from(self.port).to_ne_bytes());
        k
    }

    fn from_key(k: &[u8]) -> Option<Target> {
        let addr: [u8; 16] = k.get(..16)?.try_into().ok()?;
        let port: [u8; 4] = k.get(16..20)?.try_into().ok()?;
        let port = u16::try_from(u32::from_ne_bytes(port)).ok()?;
        let a = Ipv6Addr::from(addr);
        let addr = match a.to_ipv4_mapped() {
            _ if a.is_unspecified() => None,
            Some(v4) => Some(IpAddr::V4(v4)),
            None => Some(IpAddr::V6(a)),
        };
        Some(Target { addr, port })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            None => write!(f, "*:{}", self.port),
            Some(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// Which listener slot a socket fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("sk_lookup steering cannot start: {0}")]
    Missing(Problem),
    #[error("the kernel refused the sk_lookup program: {source} (sk_lookup needs Linux 5.9 or newer); verifier log: {log}")]
    Load { source: io::Error, log: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SteerError {
    let what = what.into();
    move |source| SteerError::Io { what, source }
}

/// What one [`Steering::apply`] changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    /// Targets whose map update failed (they are tried again on the next apply).
    pub failed: Vec<(Target, io::Error)>,
}

/// The loaded program, its maps and its link, for one node in the current network namespace.
#[derive(Debug)]
pub struct Steering {
    dir: PathBuf,
    ports: OwnedFd,
    listeners: OwnedFd,
    link: OwnedFd,
    /// The targets in the `ports` map (as taken over, then as applied).
    steered: BTreeSet<Target>,
    /// Whether the maps were pinned by a previous process and taken over.
    taken_over: bool,
}

impl Steering {
    /// Open the pinned maps under `<pin_dir>/<node_id>/` (creating them on a first start),
    /// load the program and attach it to this thread's network namespace (or swap it into
    /// the link a previous process pinned there).
    pub fn open(pin_dir: &Path, node_id: &str) -> Result<Steering, SteerError> {
        if let Some(p) = check::missing(pin_dir).into_iter().next() {
            return Err(SteerError::Missing(p));
        }
        if node_id.is_empty() || node_id == "." || node_id == ".." || node_id.contains('/') {
            return Err(SteerError::Io {
                what: format!("node id `{node_id}` cannot name a pin directory"),
                source: io::ErrorKind::InvalidInput.into(),
            });
        }
        let dir = pin_dir.join(node_id);
        std::fs::create_dir_all(&dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        let (ports, old_ports) = pinned_map(&dir.join("ports"), MapSpec::PORTS)?;
        let (listeners, _) = pinned_map(&dir.join("listeners"), MapSpec::LISTENERS)?;
        let insns = program::steer(ports.as_raw_fd(), listeners.as_raw_fd());
        let prog = sys::prog_load(
            sys::BPF_PROG_TYPE_SK_LOOKUP,
            sys::BPF_SK_LOOKUP,
            &insns,
            "anyedge_steer",
        )
        .map_err(|(source, log)| SteerError::Load { source, log })?;
        let link = attach(&dir.join("link"), prog.as_fd())?;
        let keys =
            sys::map_keys(ports.as_fd(), KEY_SIZE).map_err(io_err("cannot read the ports map"))?;
        let steered = keys.iter().filter_map(|k| Target::from_key(k)).collect();
        Ok(Steering {
            dir,
            ports,
            listeners,
            link,
            steered,
            taken_over: old_ports,
        })
    }

    /// Steer connections of `family` to `socket` (a listening TCP socket), replacing the
    /// previous one (a previous process's, on a restart or upgrade).
    pub fn set_listener(&self, family: Family, socket: BorrowedFd<'_>) -> io::Result<()> {
        let slot: u32 = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        let fd = socket.as_raw_fd() as u64;
        sys::map_update(
            self.listeners.as_fd(),
            &slot.to_ne_bytes(),
            &fd.to_ne_bytes(),
        )
    }

    /// Make the `ports` map hold exactly `wanted`, by diff: only the targets added or removed
    /// are written. Connections already accepted are not concerned.
    pub fn apply(&mut self, wanted: &BTreeSet<Target>) -> Changes {
        let mut changes = Changes::default();
        let stale: Vec<Target> = self.steered.difference(wanted).copied().collect();
        for t in stale {
            match sys::map_delete(self.ports.as_fd(), &t.key()) {
                Ok(_) => {
                    self.steered.remove(&t);
                    changes.removed += 1;
                }
                Err(e) => changes.failed.push((t, e)),
            }
        }
        let missing: Vec<Target> = wanted.difference(&self.steered).copied().collect();
        for t in missing {
            match sys::map_update(self.ports.as_fd(), &t.key(), &0u32.to_ne_bytes()) {
                Ok(()) => {
                    self.steered.insert(t);
                    changes.added += 1;
                }
                Err(e) => changes.failed.push((t, e)),
            }
        }
        changes
    }

    /// The targets steered now.
    pub fn steered(&self) -> &BTreeSet<Target> {
        &self.steered
    }

    /// Whether the maps were left pinned by a previous process and taken over.
    pub fn taken_over(&self) -> bool {
        self.taken_over
    }

    /// Whether `target` is in the kernel's map (read from the map, not from memory).
    pub fn in_map(&self, target: Target) -> io::Result<bool> {
        let mut v = [0u8; 4];
        sys::map_lookup(self.ports.as_fd(), &target.key(), &mut v)
    }

    /// The socket cookie of the listener in `family`'s slot, if one is there.
    pub fn listener_cookie(&self, family: Family) -> io::Result<Option<u64>> {
        let slot: u32 = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        let mut v = [0u8; 8];
        let found = sys::map_lookup(self.listeners.as_fd(), &slot.to_ne_bytes(), &mut v)?;
        Ok(found.then(|| u64::from_ne_bytes(v)))
    }

    /// Clean stop: detach the program from the namespace and remove the link's pin. The maps
    /// stay pinned (the listeners' slots empty as their sockets close), for the next start.
    pub fn detach(self) -> io::Result<()> {
        sys::link_detach(self.link.as_fd())?;
        match std::fs::remove_file(self.dir.join("link")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Where this node's objects are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }
}

#[derive(Clone, Copy)]
struct MapSpec {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &'static str,
}

impl MapSpec {
    const PORTS: MapSpec = MapSpec {
        map_type: sys::BPF_MAP_TYPE_HASH,
        key_size: KEY_SIZE as u32,
        value_size: 4,
        max_entries: MAX_TARGETS,
        flags: BPF_F_NO_PREALLOC,
        name: "anyedge_ports",
    };
    const LISTENERS: MapSpec = MapSpec {
        map_type: sys::BPF_MAP_TYPE_SOCKMAP,
        key_size: 4,
        value_size: 8,
        max_entries: 2,
        flags: 0,
        name: "anyedge_lsn",
    };
}

/// The map pinned at `path` if it has this shape (true: taken over), else a new one pinned
/// there in place of whatever was.
fn pinned_map(path: &Path, spec: MapSpec) -> Result<(OwnedFd, bool), SteerError> {
    let what = || format!("cannot use the map pinned at {}", path.display());
    if let Some(fd) = sys::obj_get(path).map_err(io_err(what()))? {
        // bpf_map_info: type, id, key_size, value_size, max_entries, map_flags.
        let info = sys::obj_info(fd.as_fd()).map_err(io_err(what()))?;
        let same = info[0] == spec.map_type
            && info[2] == spec.key_size
            && info[3] == spec.value_size
            && info[4] == spec.max_entries;
        if same {
            return Ok((fd, true));
        }
        tracing::warn!(path = %path.display(), "a pinned map of another shape (an older anyedge?): replaced");
        std::fs::remove_file(path).map_err(io_err(what()))?;
    }
    let fd = sys::map_create(
        spec.map_type,
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        spec.flags,
        spec.name,
    )
    .map_err(io_err(format!("cannot create the {} map", spec.name)))?;
    sys::obj_pin(fd.as_fd(), path).map_err(io_err(format!("cannot pin {}", path.display())))?;
    Ok((fd, false))
}

/// Run `prog` in this thread's network namespace: in the link pinned at `path` if it is
/// attached here (its program swapped atomically), else in a new link pinned there.
fn attach(path: &Path, prog: BorrowedFd<'_>) -> Result<OwnedFd, SteerError> {
    let netns_path = Path::new("/proc/thread-self/ns/net");
    let netns =
        std::fs::File::open(netns_path).map_err(io_err("cannot open /proc/thread-self/ns/net"))?;
    let ino = {
        use std::os::unix::fs::MetadataExt;
        netns
            .metadata()
            .map_err(io_err("cannot stat the network namespace"))?
            .ino()
    };
    let what = || format!("cannot use the link pinned at {}", path.display());
    if let Some(link) = sys::obj_get(path).map_err(io_err(what()))? {
        // bpf_link_info: type, id, prog_id, pad, then netns: netns_ino, attach_type.
        let info = sys::obj_info(link.as_fd()).map_err(io_err(what()))?;
        if u64::from(info[4]) == ino && info[5] == sys::BPF_SK_LOOKUP {
            sys::link_update(link.as_fd(), prog).map_err(io_err(what()))?;
            return Ok(link);
        }
        // Detached, or from a namespace that is gone or another one.
        std::fs::remove_file(path).map_err(io_err(what()))?;
    }
    let link = sys::link_create(prog, netns.as_fd(), sys::BPF_SK_LOOKUP).map_err(io_err(
        "cannot attach the sk_lookup program to the network namespace",
    ))?;
    sys::obj_pin(link.as_fd(), path).map_err(io_err(format!("cannot pin {}", path.display())))?;
    Ok(link)
}

/// The `ports` map's keys in the kernel's layout, for tests of the layout itself.
#[doc(hidden)]
pub fn key_bytes(t: Target) -> [u8; KEY_SIZE] {
    t.key()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn keys_round_trip() {
        for t in [
            Target {
                addr: None,
                port: 80,
            },
            Target {
                addr: Some(Ipv4Addr::new(127, 0, 0, 2).into()),
                port: 65535,
            },
            Target {
                addr: Some(Ipv6Addr::LOCALHOST.into()),
                port: 1,
            },
        ] {
            assert_eq!(Target::from_key(&t.key()), Some(t));
        }
        let k = Target {
            addr: Some(Ipv4Addr::new(10, 1, 2, 3).into()),
            port: 0x1234,
        }
        .key();
        assert_eq!(
            &k[..16],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
        );
        assert_eq!(&k[16..], &0x1234u32.to_ne_bytes());
    }
}
