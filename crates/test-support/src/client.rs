//! Client-side helpers with deadlines: connect, read a line, echo a payload.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

async fn within<T>(
    what: &str,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out")))?
}

pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    within("connect", TcpStream::connect(addr)).await
}

/// Connect from a chosen loopback source address (per-client-IP tests).
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    within("connect", socket.connect(addr)).await
}

/// Read up to and without the next `\n`. EOF before it is an error.
pub async fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    within("read line", async {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            if stream.read(&mut byte).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(&line)),
                ));
            }
            if byte[0] == b'\n' {
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(byte[0]);
        }
    })
    .await
}

/// Send `payload` and read the same number of bytes back.
pub async fn echo(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    within("echo", async {
        let (mut r, mut w) = stream.split();
        let write = async {
            w.write_all(payload).await?;
            Ok::<_, io::Error>(())
        };
        let read = async {
            let mut back = vec![0u8; payload.len()];
            r.read_exact(&mut back).await?;
            Ok::<_, io::Error>(back)
        };
        let ((), back) = tokio::try_join!(write, read)?;
        Ok(back)
    })
    .await
}

/// True when the peer closes the connection (EOF or reset) within the deadline without
/// sending anything.
pub async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}
