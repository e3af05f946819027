//! The demo's built-in TCP instances, on 127.0.0.1 ephemeral ports.

use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
pub enum Kind {
    /// Sends back every byte.
    Echo,
    /// Answers each line upper-cased, like the work sample's public echo server.
    Upper,
    /// Reads a PROXY v1 header and greets the client by its address.
    WhoAmI(&'static str),
}

pub async fn spawn(kind: Kind) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = match kind {
                    Kind::Echo => echo(stream).await,
                    Kind::Upper => upper(stream).await,
                    Kind::WhoAmI(name) => whoami(stream, name).await,
                };
            });
        }
    });
    Ok(addr)
}

/// A port nothing listens on (bound, then released), for a target that refuses.
pub fn unused_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

async fn upper(stream: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        w.write_all(format!("{}\n", line.to_uppercase()).as_bytes())
            .await?;
    }
    w.shutdown().await
}

async fn whoami(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let client = match lines.next_line().await? {
        Some(header) => header
            .strip_prefix("PROXY ")
            .and_then(|rest| {
                let f: Vec<&str> = rest.split(' ').collect();
                (f.len() == 5).then(|| format!("{}:{}", f[1], f[3]))
            })
            .unwrap_or_else(|| "someone without a PROXY header".into()),
        None => return Ok(()),
    };
    while let Some(line) = lines.next_line().await? {
        w.write_all(format!("hello {client}, this is {name}; you said: {line}\n").as_bytes())
            .await?;
    }
    w.shutdown().await
}
