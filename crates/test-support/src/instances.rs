//! Fake TCP instances on 127.0.0.1 ephemeral ports, each counting the connections it accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What a fake instance does with a connection.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Sends back every byte, prefixed once by `tag` and a newline when `tag` is non-empty.
    Echo { tag: String },
    /// Reads a PROXY header (v1 or v2) and reports what it read, then echoes.
    ProxyHeaderEcho,
    /// Sends `bytes` then closes abruptly (RST).
    CloseMidStream { bytes: usize },
    /// Reads what the client sends first, then closes abruptly (RST) without answering.
    ResetAfterRead,
}

/// A running fake instance. Stops when dropped.
pub struct FakeInstance {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl FakeInstance {
    pub async fn start(behaviour: Behaviour) -> FakeInstance {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake instance");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    res = listener.accept() => {
                        let Ok((stream, _)) = res else { continue };
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(serve(stream, behaviour.clone()));
                    }
                }
            }
        });
        FakeInstance {
            addr,
            accepted,
            _stop: stop,
        }
    }

    pub async fn echo(tag: &str) -> FakeInstance {
        Self::start(Behaviour::Echo {
            tag: tag.to_string(),
        })
        .await
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour) -> std::io::Result<()> {
    match behaviour {
        Behaviour::Echo { tag } => {
            if !tag.is_empty() {
                stream.write_all(format!("{tag}\n").as_bytes()).await?;
            }
            let (mut r, mut w) = stream.split();
            tokio::io::copy(&mut r, &mut w).await?;
            w.shutdown().await
        }
        Behaviour::ProxyHeaderEcho => {
            let mut buf = vec![0u8; 536];
            let mut len = 0;
            // Read until a whole header is there: v1 ends with CRLF, v2 carries its length.
            let header_len = loop {
                let n = stream.read(&mut buf[len..]).await?;
                if n == 0 {
                    return Ok(());
                }
                len += n;
                if let Some(l) = header_length(&buf[..len]) {
                    break l;
                }
                if len == buf.len() {
                    return Ok(());
                }
            };
            let report = describe_header(&buf[..header_len]);
            stream.write_all(format!("{report}\n").as_bytes()).await?;
            stream.write_all(&buf[header_len..len]).await?;
            let (mut r, mut w) = stream.split();
            tokio::io::copy(&mut r, &mut w).await?;
            w.shutdown().await
        }
        Behaviour::ResetAfterRead => {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await?;
            socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO))?;
            Ok(())
        }
        Behaviour::CloseMidStream { bytes } => {
            stream.write_all(&vec![b'x'; bytes]).await?;
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            Ok(())
        }
    }
}

const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn header_length(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"PROXY ") {
        buf.windows(2).position(|w| w == b"\r\n").map(|p| p + 2)
    } else if buf.len() >= 16 && buf.starts_with(V2_SIG) {
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        (buf.len() >= 16 + len).then_some(16 + len)
    } else {
        None
    }
}

/// `v1 <text without CRLF>` or `v2 <src> <dst>`, parsed by hand so the tests check the bytes
/// against an independent reading of the spec.
fn describe_header(h: &[u8]) -> String {
    if h.starts_with(b"PROXY ") {
        return format!("v1 {}", String::from_utf8_lossy(&h[..h.len() - 2]));
    }
    let body = &h[16..];
    match h[13] {
        0x11 if body.len() >= 12 => {
            let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            format!(
                "v2 {}:{} {}:{}",
                ip(&body[0..4]),
                port(&body[8..10]),
                ip(&body[4..8]),
                port(&body[10..12])
            )
        }
        0x21 if body.len() >= 36 => {
            let ip = |b: &[u8]| {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                std::net::Ipv6Addr::from(a)
            };
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            format!(
                "v2 [{}]:{} [{}]:{}",
                ip(&body[0..16]),
                port(&body[32..34]),
                ip(&body[16..32]),
                port(&body[34..36])
            )
        }
        other => format!("v2 unknown family {other:#x}"),
    }
}
