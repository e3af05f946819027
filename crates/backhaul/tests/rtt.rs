//! Kernel RTT of loopback TCP sockets, read directly and sampled while reading.

use anyedge_backhaul::rtt::{tcp_rtt, RttSampled};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(5);

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), accepted.expect("accept").0)
}

#[tokio::test]
async fn a_connected_loopback_socket_has_an_rtt() {
    let (mut client, mut server) = pair().await;
    client.write_all(b"ping").await.expect("write");
    let mut b = [0u8; 4];
    tokio::time::timeout(DEADLINE, server.read_exact(&mut b))
        .await
        .expect("in time")
        .expect("read");
    let rtt = tcp_rtt(&client).expect("client rtt");
    assert!(
        rtt > Duration::ZERO && rtt < Duration::from_secs(1),
        "{rtt:?}"
    );
    assert!(tcp_rtt(&server).is_some());
}

#[tokio::test]
async fn not_a_tcp_socket_has_none() {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    assert_eq!(tcp_rtt(&udp), None);
}

/// Echoes what it reads until the peer closes.
fn echo(mut server: TcpStream) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let (mut r, mut w) = server.split();
        tokio::io::copy(&mut r, &mut w).await?;
        Ok(())
    })
}

async fn round_trip(s: &mut RttSampled, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(back, msg);
}

#[tokio::test]
async fn rtt_sampled_stores_the_rtt_while_read() {
    let (client, server) = pair().await;
    let echo = echo(server);
    let cell = Arc::new(AtomicU32::new(0));
    let mut sampled = RttSampled::new(client, cell.clone(), Duration::ZERO);
    round_trip(&mut sampled, b"hello").await;
    assert!(tcp_rtt(sampled.get_ref()).is_some());
    let micros = cell.load(Ordering::Relaxed);
    assert!(micros > 0 && micros < 1_000_000, "{micros}");
    // every = 0: each read samples again.
    cell.store(0, Ordering::Relaxed);
    round_trip(&mut sampled, b"again").await;
    assert!(cell.load(Ordering::Relaxed) > 0);
    drop(sampled);
    echo.await.expect("joined").expect("echo");
}

#[tokio::test]
async fn rtt_sampled_samples_at_most_once_per_period() {
    let (client, server) = pair().await;
    let echo = echo(server);
    let cell = Arc::new(AtomicU32::new(0));
    let mut sampled = RttSampled::new(client, cell.clone(), Duration::from_secs(3600));
    round_trip(&mut sampled, b"first").await;
    assert!(cell.load(Ordering::Relaxed) > 0, "the first read samples");
    cell.store(0, Ordering::Relaxed);
    for _ in 0..10 {
        round_trip(&mut sampled, b"more").await;
    }
    assert_eq!(
        cell.load(Ordering::Relaxed),
        0,
        "no second sample within the period"
    );
    drop(sampled);
    echo.await.expect("joined").expect("echo");
}
