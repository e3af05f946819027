//! The `bpf(2)` commands the loader needs, as thin typed wrappers over the raw system call:
//! create, look up, update, delete and walk a map; load a program; pin and get an object;
//! create, update and detach a link; read an object's info. Each attribute block is a
//! `#[repr(C)]` prefix of the kernel's `union bpf_attr` (the kernel zero-fills the rest).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

pub(crate) const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_PROG_LOAD: u32 = 5;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_UPDATE: u32 = 29;
const BPF_LINK_DETACH: u32 = 34;

pub(crate) const BPF_MAP_TYPE_HASH: u32 = 1;
pub(crate) const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
pub(crate) const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
pub(crate) const BPF_SK_LOOKUP: u32 = 36;
/// `BPF_ANY`: create or replace.
pub(crate) const BPF_ANY: u64 = 0;

fn bpf<T>(cmd: u32, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` block of the size passed; the kernel
    // reads (and for some commands writes) at most that many bytes. Pointers inside it point
    // to buffers that outlive the call (each caller keeps them borrowed across it).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_of(r: libc::c_long) -> OwnedFd {
    // SAFETY: the commands passed here return a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

fn raw(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *o = b;
    }
    out
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

pub(crate) fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
        map_name: name16(name),
        ..MapCreate::default()
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(fd_of)
}

#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn elem(map: BorrowedFd<'_>, key: &[u8], value: u64, flags: u64) -> MapElem {
    MapElem {
        map_fd: raw(map),
        _pad: 0,
        key: key.as_ptr() as u64,
        value,
        flags,
    }
}

pub(crate) fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = elem(map, key, value.as_ptr() as u64, BPF_ANY);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// `Ok(false)` when the key was not there.
pub(crate) fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut attr = elem(map, key, 0, 0);
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `Ok(false)` when the key is not there.
pub(crate) fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem(map, key, value.as_mut_ptr() as u64, 0);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every key of a map of `key_size`-byte keys (a map changed while walked may repeat or skip
/// keys; the loader walks only maps it alone writes).
pub(crate) fn map_keys(map: BorrowedFd<'_>, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    let mut next = vec![0u8; key_size];
    loop {
        let prev = keys.last().map_or(0, |k: &Vec<u8>| k.as_ptr() as u64);
        let mut attr = MapElem {
            map_fd: raw(map),
            _pad: 0,
            key: prev,
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => keys.push(next.clone()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Load a program; on a verifier refusal the error carries the verifier's log.
pub(crate) fn prog_load(
    prog_type: u32,
    attach_type: u32,
    insns: &[u64],
    name: &str,
) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let attempt = |log: &mut Vec<u8>, level: u32| {
        let mut attr = ProgLoad {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: level,
            log_size: if level > 0 { log.len() as u32 } else { 0 },
            log_buf: if level > 0 {
                log.as_mut_ptr() as u64
            } else {
                0
            },
            prog_name: name16(name),
            expected_attach_type: attach_type,
            ..ProgLoad::default()
        };
        bpf(BPF_PROG_LOAD, &mut attr).map(fd_of)
    };
    match attempt(&mut log, 0) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with the verifier's log, to say why.
            let _ = attempt(&mut log, 1);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((first, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct ObjPath {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    let mut attr = ObjPath {
        pathname: p.as_ptr() as u64,
        bpf_fd: raw(fd),
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `Ok(None)` when nothing is pinned at `path`.
pub(crate) fn obj_get(path: &Path) -> io::Result<Option<OwnedFd>> {
    let p = c_path(path)?;
    let mut attr = ObjPath {
        pathname: p.as_ptr() as u64,
        ..ObjPath::default()
    };
    match bpf(BPF_OBJ_GET, &mut attr) {
        Ok(r) => Ok(Some(fd_of(r))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The first words of an object's `bpf_*_info` (map: type, id, key size, value size, max
/// entries; link: type, id, prog id, pad, then for a netns link its inode and attach type).
pub(crate) fn obj_info(fd: BorrowedFd<'_>) -> io::Result<[u32; 8]> {
    let mut info = [0u32; 8];
    let mut attr = InfoByFd {
        bpf_fd: raw(fd),
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

pub(crate) fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: raw(prog),
        target_fd: raw(target),
        attach_type,
        ..LinkCreate::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(fd_of)
}

#[repr(C)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Swap the program a link runs, atomically: no packet sees neither.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdate {
        link_fd: raw(link),
        new_prog_fd: raw(prog),
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

#[repr(C)]
struct LinkDetach {
    link_fd: u32,
}

pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkDetach { link_fd: raw(link) };
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}
