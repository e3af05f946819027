//! The loader against the real kernel, as root, in a network namespace of its own (loopback
//! only): connections to steered (address, port)s land on one listening socket, others are
//! refused; the map follows a diff; a new process takes the pinned maps over; detaching stops
//! the steering. Skipped, with the reason printed, without root.

use anyedge_steering::{netns, Family, Steering, Target};
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "not root: sk_lookup needs CAP_BPF, CAP_NET_ADMIN and a network namespace".into(),
        );
    }
    if let Err(e) = netns::mount_bpffs() {
        return Some(format!("cannot mount bpffs at /sys/fs/bpf: {e}"));
    }
    None
}

/// Run `f` on a thread in a new network namespace; the test's panics come through.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let t = std::thread::spawn(move || {
        netns::enter_new().expect("new network namespace");
        f()
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// A pin directory of this test's own, removed when the test ends (passed or failed).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pin_dir(name: &str) -> PinDir {
    PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/anyedge-test-{}-{name}",
        std::process::id()
    )))
}

fn any(port: u16) -> Target {
    Target { addr: None, port }
}

fn at(ip: [u8; 4], port: u16) -> Target {
    Target {
        addr: Some(IpAddr::from(ip)),
        port,
    }
}

fn listener(addr: &str) -> TcpListener {
    let l = TcpListener::bind(addr).expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// Connect to `to` and accept on `l` within a deadline: the local address the accepted
/// socket reports (the client's original destination).
fn lands_on(l: &TcpListener, to: SocketAddr) -> (TcpStream, TcpStream, SocketAddr) {
    let client = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect {to}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                let local = s.local_addr().expect("local addr");
                return (client, s, local);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("nothing accepted for {to}: {e}"),
        }
    }
}

fn refused(to: SocketAddr) {
    match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("{to}: expected refused, got {other:?}"),
    }
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
}

/// Sockets listening in this namespace (`/proc/thread-self/net/tcp{,6}`), by local port.
fn listening_ports() -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for f in ["tcp", "tcp6"] {
        let text =
            std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // st 0A: LISTEN.
            if cols.get(3) == Some(&"0A") {
                if let Some(port) = cols[1].rsplit(':').next() {
                    out.insert(u16::from_str_radix(port, 16).expect("hex port"));
                }
            }
        }
    }
    out
}

#[test]
fn steered_ports_land_on_one_listener() {
    in_netns(|| {
        let dir = pin_dir("land");
        let mut s = Steering::open(&dir.0, "n1").expect("load");
        assert!(!s.taken_over());
        let v4 = listener("127.0.0.1:0");
        s.set_listener(Family::V4, v4.as_fd()).expect("listener v4");
        let v6 = TcpListener::bind("[::1]:0").ok();
        eprintln!("IPv6 exercised: {}", v6.is_some());
        if let Some(l) = &v6 {
            l.set_nonblocking(true).expect("nonblocking");
            s.set_listener(Family::V6, l.as_fd()).expect("listener v6");
        }
        let wanted: BTreeSet<Target> = [any(7001), any(7002), at([127, 0, 0, 2], 7003)].into();
        let c = s.apply(&wanted);
        assert_eq!((c.added, c.removed, c.failed.len()), (3, 0, 0));

        // Every steered (address, port) lands on the one listener, which sees the address
        // the client dialled.
        for to in [
            sa([127, 0, 0, 1], 7001),
            sa([127, 0, 0, 9], 7002),
            sa([127, 0, 0, 2], 7003),
        ] {
            let (_c, _s, local) = lands_on(&v4, to);
            assert_eq!(local, to);
        }
        if let Some(l) = &v6 {
            let to: SocketAddr = "[::1]:7001".parse().expect("addr");
            assert_eq!(lands_on(l, to).2, to);
        }
        // A port bound to one address is steered on that address only; others are refused.
        refused(sa([127, 0, 0, 1], 7003));
        refused(sa([127, 0, 0, 1], 7004));
        let listening = listening_ports();
        for port in [7001, 7002, 7003] {
            assert!(
                !listening.contains(&port),
                "a socket listens on {port}: {listening:?}"
            );
        }

        // Removing a port by diff: refused from then on; a connection already open goes on.
        let (mut client, mut server, _) = lands_on(&v4, sa([127, 0, 0, 1], 7002));
        let c = s.apply(&[any(7001), at([127, 0, 0, 2], 7003)].into());
        assert_eq!((c.added, c.removed), (0, 1));
        assert!(!s.in_map(any(7002)).expect("lookup"));
        refused(sa([127, 0, 0, 1], 7002));
        client.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
        lands_on(&v4, sa([127, 0, 0, 1], 7001));

        // Detached: nothing steered, though the listener and the maps are still there.
        s.detach().expect("detach");
        refused(sa([127, 0, 0, 1], 7001));
    });
}

#[test]
fn a_restarted_node_takes_the_pinned_maps_over() {
    in_netns(|| {
        let dir = pin_dir("restart");
        let first = listener("127.0.0.1:0");
        let mut s = Steering::open(&dir.0, "n1").expect("load");
        s.set_listener(Family::V4, first.as_fd()).expect("listener");
        s.apply(&[any(7101), any(7102)].into());
        lands_on(&first, sa([127, 0, 0, 1], 7101));

        // The process dies (no detach): its socket leaves the sockmap as it closes, so
        // nothing steers to it; connections are refused, not lost in a dead queue.
        drop(s);
        drop(first);
        refused(sa([127, 0, 0, 1], 7101));

        // The next process finds the maps and the link pinned and takes them over.
        let mut s = Steering::open(&dir.0, "n1").expect("reload");
        assert!(s.taken_over());
        assert_eq!(s.steered(), &[any(7101), any(7102)].into());
        let second = listener("127.0.0.1:0");
        s.set_listener(Family::V4, second.as_fd())
            .expect("listener");
        lands_on(&second, sa([127, 0, 0, 1], 7102));
        let c = s.apply(&[any(7102), any(7103)].into());
        assert_eq!((c.added, c.removed), (1, 1));
        lands_on(&second, sa([127, 0, 0, 1], 7103));
        refused(sa([127, 0, 0, 1], 7101));
        s.detach().expect("detach");
    });
}
