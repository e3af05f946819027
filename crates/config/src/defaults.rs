//! Defaults that do not fit a `Default` impl: the node's identity comes from the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::model::{Admin, Http, Node, Roles};

pub(crate) const REGION: &str = "local";
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180);
pub(crate) const ADMIN_UPDATE_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const HEADER_PREFIX: &str = "anyedge";
pub(crate) const BPF_PIN_DIR: &str = "/sys/fs/bpf/anyedge";

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A node with every default: the host name as id, region `local`, both roles.
pub(crate) fn node() -> Node {
    Node {
        id: host_name(),
        region: REGION.to_string(),
        roles: Roles {
            edge: true,
            worker: true,
        },
        threads: 0,
        drain_timeout: DRAIN_TIMEOUT,
        backhaul_listen: None,
        advertise: None,
        control_socket: None,
        steering: crate::model::Steering::Sockets,
        bpf_pin_dir: BPF_PIN_DIR.into(),
    }
}

pub(crate) fn admin() -> Admin {
    Admin {
        listen: ADMIN_LISTEN,
        tokens_sha256: Vec::new(),
        update_interval: ADMIN_UPDATE_INTERVAL,
    }
}

pub(crate) fn http() -> Http {
    Http {
        header_prefix: HEADER_PREFIX.to_string(),
        ..Http::default()
    }
}
