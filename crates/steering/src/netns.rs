//! A private network namespace for tests of steering (which changes how the whole namespace
//! accepts connections): the calling thread, and every thread and process it starts from then
//! on, gets a namespace of its own with loopback up. Needs CAP_SYS_ADMIN (root).

use std::io;

/// Move the calling thread into a new network namespace and bring `lo` up in it.
pub fn enter_new() -> io::Result<()> {
    // SAFETY: unshare(2) with one flag; it changes only this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    loopback_up()
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ifreq` is plain data; zero is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the `ifreq` passed, live for the calls;
    // the flags member of the union is the one these requests use.
    let r = unsafe {
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req);
        }
        r
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(err);
    }
    Ok(())
}

/// Mount a BPF filesystem at `/sys/fs/bpf` unless one is there (tests, and the demo run as
/// root; a node never mounts one itself: it says how, `crate::Problem::NoBpffs`).
pub fn mount_bpffs() -> io::Result<()> {
    let at = std::path::Path::new("/sys/fs/bpf");
    if crate::check::is_bpffs(at) {
        return Ok(());
    }
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
