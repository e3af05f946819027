//! Messages on the control socket: one `SOCK_SEQPACKET` packet each (the kernel keeps their
//! boundaries, so a message and the descriptors riding with it arrive together), descriptors
//! as `SCM_RIGHTS`. The codec is `anyedge_core::control`; this is the system-call side.

use anyedge_core::control::{Message, MAX_FDS, MAX_MESSAGE};
use socket2::Socket;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Send `message` with `fds` (at most [`MAX_FDS`]).
pub(crate) fn send(socket: &Socket, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS || fds.len() != message.descriptors() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors do not match the message",
        ));
    }
    let bytes = message.encode();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let data_len = std::mem::size_of_val(fds);
    let mut control = ControlBuf::for_fds(fds.len());
    // SAFETY: a zeroed msghdr is a valid empty one; every pointer set below outlives the call.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if !fds.is_empty() {
        header.msg_control = control.as_mut_ptr();
        header.msg_controllen = control.len() as _;
        // SAFETY: the control buffer has room for one header with `fds.len()` descriptors
        // (CMSG_SPACE), and is aligned for `cmsghdr` (a buffer of u64).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `header` points at live buffers; the socket is open.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &header, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return match usize::try_from(sent) == Ok(bytes.len()) {
                true => Ok(()),
                false => Err(io::Error::new(io::ErrorKind::WriteZero, "message cut")),
            };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The next message and its descriptors; `None` when the peer closed. A message that does not
/// decode, or came cut, is an `InvalidData` error, and its descriptors are closed.
pub(crate) fn recv(socket: &Socket) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = ControlBuf::for_fds(MAX_FDS);
    // SAFETY: as in `send`.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr();
    header.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: `header` points at live buffers of the lengths it says.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break usize::try_from(n).unwrap_or(0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let fds = received_fds(&header);
    if header.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(invalid("a message or its descriptors came cut"));
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    let message = Message::decode(&buf[..n], fds.len()).map_err(|e| invalid(&e.to_string()))?;
    Ok(Some((message, fds)))
}

/// Take ownership of every descriptor the kernel put in `header`'s control messages.
fn received_fds(header: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: `header` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay inside its control
    // buffer, and each SCM_RIGHTS payload is `cmsg_len - CMSG_LEN(0)` bytes of descriptors
    // that are now ours (so wrapping them in OwnedFd is sound, and closes them on drop).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload =
                    ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..payload / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    fds
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// A control-message buffer aligned for `cmsghdr`.
struct ControlBuf(Vec<u64>);

impl ControlBuf {
    fn for_fds(n: usize) -> ControlBuf {
        let bytes = std::mem::size_of::<RawFd>() * n.max(1);
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        ControlBuf(vec![0u64; space.div_ceil(8)])
    }

    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.0.as_mut_ptr().cast()
    }

    fn len(&self) -> usize {
        self.0.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyedge_core::control::{ListenKey, Listener, Role};
    use socket2::{Domain, Type};

    fn pair() -> (Socket, Socket) {
        Socket::pair(Domain::UNIX, Type::SEQPACKET, None).expect("socketpair")
    }

    #[test]
    fn descriptors_travel_with_their_message() {
        let (a, b) = pair();
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let msg = Message::Sockets(vec![Listener {
            role: Role::App,
            key: ListenKey::Addr(addr),
            count: 1,
        }]);
        use std::os::fd::AsFd;
        send(&a, &msg, &[l.as_fd()]).expect("send");
        let (got, fds) = recv(&b).expect("recv").expect("a message");
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.into_iter().next().expect("fd"));
        assert_eq!(received.local_addr().expect("addr"), addr);
    }

    #[test]
    fn garbage_is_an_error_and_eof_is_none() {
        let (a, b) = pair();
        a.send(b"hello\n").expect("send");
        let e = recv(&b).expect_err("garbage");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        drop(a);
        assert!(recv(&b).expect("eof").is_none());
    }

    #[test]
    fn descriptors_the_message_does_not_announce_are_refused() {
        let (a, b) = pair();
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        use std::os::fd::AsFd;
        // Sent by hand: `send` itself refuses a mismatch.
        let e = send(&a, &Message::End, &[l.as_fd()]).expect_err("mismatch");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let _ = b;
    }
}
