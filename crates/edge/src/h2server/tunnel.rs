//! An extended CONNECT stream (RFC 8441) as a byte stream both ways, once its 200 is sent: what
//! the forwarding core tunnels to the instance (a WebSocket over HTTP/2). Reads give the window
//! back as they are taken; writes wait for window, so a peer that reads slowly slows the tunnel
//! rather than filling memory.

use super::idle::StreamGuard;
use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(super) struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received, not yet read.
    unread: Bytes,
    /// The stream counts as open on its connection for as long as the tunnel lives.
    _guard: StreamGuard,
}

impl Tunnel {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, guard: StreamGuard) -> Tunnel {
        Tunnel {
            send,
            recv,
            unread: Bytes::new(),
            _guard: guard,
        }
    }
}

/// A stream reset by the peer with NO_ERROR or CANCEL is its end, not a failure.
fn h2_to_io(e: h2::Error) -> Result<(), io::Error> {
    match e.reason() {
        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) => Ok(()),
        _ if e.is_io() => Err(e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into())),
        _ => Err(io::Error::other(e)),
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.unread = data;
                }
                Some(Err(e)) => return Poll::Ready(h2_to_io(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(buf.len());
        loop {
            let cap = this.send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                let sent = this
                    .send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false);
                return Poll::Ready(match sent {
                    Ok(()) => Ok(n),
                    Err(e) => Err(io::Error::other(e)),
                });
            }
            match this.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => {
                    // The peer may reset the stream while we wait for window.
                    if let Poll::Ready(r) = this.send.poll_reset(cx) {
                        let e = match r {
                            Ok(reason) => io::Error::other(h2::Error::from(reason)),
                            Err(e) => io::Error::other(e),
                        };
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // END_STREAM: our side is done; the peer's may go on until it ends too.
        let _ = self.get_mut().send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}
