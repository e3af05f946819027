//! What `sk_lookup` steering needs from the machine, and how to provide what is missing: the
//! capabilities to load the program and attach it (CAP_BPF and CAP_NET_ADMIN, or
//! CAP_SYS_ADMIN), a BPF filesystem under `bpf_pin_dir`, and a kernel that has `sk_lookup`
//! (5.9+). `anyedge check` prints these; start-up refuses to run without them.

use crate::sys;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

/// One thing the machine lacks, with how to fix it in its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("missing capabilities {}: run as root, or grant them (`setcap cap_bpf,cap_net_admin+ep /usr/local/bin/anyedge`, or AmbientCapabilities=CAP_BPF CAP_NET_ADMIN in the systemd unit)", .missing.join(", "))]
    Capabilities { missing: Vec<&'static str> },
    #[error("bpf_pin_dir {} is not on a BPF filesystem ({} is not bpffs): mount one with `mount -t bpf bpf /sys/fs/bpf` (systemd mounts it at boot), or set [node] bpf_pin_dir to a directory on one", .path.display(), .checked.display())]
    NoBpffs { path: PathBuf, checked: PathBuf },
    #[error("the kernel does not load the sk_lookup program: {0} (sk_lookup needs Linux 5.9 or newer, with CONFIG_BPF_SYSCALL and CONFIG_NET)")]
    Kernel(String),
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The problems found before anything is loaded: capabilities, the BPF filesystem.
pub(crate) fn missing(pin_dir: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(p) = capabilities() {
        out.push(p);
    }
    if let Some(p) = bpffs(pin_dir) {
        out.push(p);
    }
    out
}

/// Everything `sk_lookup` steering would lack here: [`missing`], then, with the capabilities,
/// whether the kernel loads the program (loaded against throw-away maps, then closed; nothing
/// is attached or pinned).
pub fn problems(pin_dir: &Path) -> Vec<Problem> {
    let mut out = missing(pin_dir);
    if !out
        .iter()
        .any(|p| matches!(p, Problem::Capabilities { .. }))
    {
        if let Err(e) = load_probe() {
            out.push(Problem::Kernel(e));
        }
    }
    out
}

fn load_probe() -> Result<(), String> {
    let ports = sys::map_create(sys::BPF_MAP_TYPE_HASH, 20, 4, 1, 0, "anyedge_probe")
        .map_err(|e| format!("hash map: {e}"))?;
    let listeners = sys::map_create(sys::BPF_MAP_TYPE_SOCKMAP, 4, 8, 2, 0, "anyedge_probe")
        .map_err(|e| format!("sockmap: {e}"))?;
    let insns = crate::program::steer(ports.as_raw_fd(), listeners.as_raw_fd());
    let prog = sys::prog_load(
        sys::BPF_PROG_TYPE_SK_LOOKUP,
        sys::BPF_SK_LOOKUP,
        &insns,
        "anyedge_probe",
    )
    .map_err(|(e, log)| format!("{e}; verifier: {}", log.trim()))?;
    drop((prog.as_fd(), ports, listeners));
    Ok(())
}

/// The effective capability sets, from `capget(2)`.
fn effective() -> Option<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3: two data words.
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget reads the header and writes two `Data` entries (version 3), both live
    // for the call.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    (r == 0).then(|| u64::from(data[0].effective) | u64::from(data[1].effective) << 32)
}

fn capabilities() -> Option<Problem> {
    let caps = effective()?;
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return None;
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    (!missing.is_empty()).then_some(Problem::Capabilities { missing })
}

/// `None` when `pin_dir`, or its nearest existing ancestor, is on a BPF filesystem.
fn bpffs(pin_dir: &Path) -> Option<Problem> {
    let checked = pin_dir.ancestors().find(|p| p.exists())?.to_path_buf();
    if is_bpffs(&checked) {
        return None;
    }
    Some(Problem::NoBpffs {
        path: pin_dir.to_path_buf(),
        checked,
    })
}

pub(crate) fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes one `statfs` struct, zero-initialised and live for the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path; `st` is a valid out pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == BPF_FS_MAGIC
}
