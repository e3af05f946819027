//! systemd's readiness protocol (`sd_notify`), without libsystemd: when the service manager
//! set `NOTIFY_SOCKET`, a node says `READY=1` once it serves, and names itself the service's
//! main process (`MAINPID=`), so that after an upgrade systemd follows the new process rather
//! than the old one, which exits (`docs/operations.md`: `Type=notify`, `NotifyAccess=all`).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tell the service manager this process serves and is the main one; nothing without
/// `NOTIFY_SOCKET`. A failure is logged: the node serves either way.
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let state = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = (|| -> std::io::Result<usize> {
        let socket = UnixDatagram::unbound()?;
        let addr = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
