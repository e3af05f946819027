//! An instance that answers before it has read the request's body (an early answer, or a
//! replay asked on the head alone) leaves its connection owing body bytes: that connection must
//! never carry another request. A raw TCP instance answers every request at once and reads
//! nothing more on the connection of the first one.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::{full, request, Client};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Read one request head; `None` when the connection closed.
async fn head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Answers `200 early` to the first request on the head alone and then reads nothing more on
/// that connection (it stays open); every other connection is served normally.
async fn early_instance() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let first = count.fetch_add(1, Ordering::SeqCst) == 0;
            if first {
                if head(&mut s).await.is_some() {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                        .await;
                }
                held.push(s); // open, unread
                continue;
            }
            tokio::spawn(async move {
                while let Some(h) = head(&mut s).await {
                    let len = h
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nserved";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_owed_body_bytes_never_carries_the_next_request() {
    let (instance, connections) = early_instance().await;
    let port = free_port();
    let toml = format!(
        "[[apps]]\nname = \"web\"\nhostnames = [\"web.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"web-1\"\n  address = \"{instance}\"\n"
    );
    let config = anyedge_config::parse(&toml, "early.toml").unwrap_or_else(|d| panic!("{d}"));
    let _node = Node::start(config, Some(local(0))).await.expect("node");
    // 16 MiB: more than the kernel buffers between the proxy and the instance take, so the
    // proxy is still sending when the answer is complete.
    let mut uploader = Client::plain(local(port), false).await;
    let upload = request("POST", "web.test", "/upload", false)
        .body(full(vec![b'x'; 16 << 20]))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), uploader.send(upload))
        .await
        .expect("the early answer arrives");
    assert_eq!(resp.expect("response").status(), 200);
    // The next request, on another client connection, must not be sent on the connection
    // that still owes the instance most of 16 MiB (it would wait forever).
    let mut client = Client::plain(local(port), false).await;
    for _ in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(5), client.get("web.test", "/next"))
            .await
            .expect("the next request is answered, not stuck behind an unfinished body");
        assert_eq!((got.0, got.2.as_str()), (200, "served"));
    }
    assert!(
        connections.load(Ordering::SeqCst) >= 2,
        "a fresh connection served it"
    );
}
