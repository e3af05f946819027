//! The client-facing HTTP/2 server's protections, at the system level: a client that opens and
//! resets streams in a flood (rapid reset) gets GOAWAY and is counted as a client error; a
//! client that reads nothing of a large answer holds at most its window in the proxy, and gets
//! the whole answer once it reads; on drain, a stream in flight finishes and the client is told
//! GOAWAY; a client that resets a stream cancels its request.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_instance::HttpInstance;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn one_app() -> (Node, u16, HttpInstance) {
    let inst = HttpInstance::start("alpha", false).await;
    let port = free_port();
    let toml = format!(
        "[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"alpha-1\"\n  address = \"{}\"\n",
        inst.addr
    );
    let config = anyedge_config::parse(&toml, "h2.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(local(0))).await.expect("node");
    (node, port, inst)
}

/// An HTTP/2 client connection (h2c, prior knowledge) whose receive window is the protocol's
/// default (64 KiB - 1), with its connection driven in a task of its own.
async fn h2c(port: u16) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(local(port)).await.expect("connect");
    let (send, conn) = h2::client::Builder::new()
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://alpha.test{path}"))
        .body(())
        .expect("request")
}

/// A HEADERS frame on `id` (GET http://alpha.test/, END_STREAM) and an RST_STREAM(CANCEL).
fn opened_and_reset(id: u32, out: &mut Vec<u8>) {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 10];
    block.extend_from_slice(b"alpha.test");
    out.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[1, 0x05]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(&[0, 0, 4, 3, 0]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&8u32.to_be_bytes());
}

/// Frames read until the connection closes (or `wait` runs out): the GOAWAY's error code, if one
/// came.
async fn goaway_code(s: &mut TcpStream, wait: Duration) -> Option<u32> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Whole frames in the buffer first.
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 7 && len >= 8 {
                return Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf.drain(..9 + len);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_streams_rapidly_gets_goaway_and_is_counted() {
    let (node, port, _inst) = one_app().await;
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // CVE-2023-44487: streams opened and reset at once, a thousand in one write.
    for i in 0..1000u32 {
        opened_and_reset(2 * i + 1, &mut flood);
    }
    s.write_all(&flood).await.expect("flood");
    let code = goaway_code(&mut s, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM) expected");
    // The client's fault, counted as such.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = node.metrics().render();
        if m.contains("anyedge_node_errors_total{code=\"bad_request\"} 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not counted: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Other clients are served as before.
    let mut send = h2c(port).await;
    let (resp, _) = send.send_request(get("/"), true).expect("send");
    assert_eq!(resp.await.expect("response").status(), 200);
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_holds_its_window_not_the_answer() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let (_node, port, _inst) = one_app().await;
    let mut send = h2c(port).await;
    let (resp, _) = send
        .send_request(get(&format!("/bytes/{SIZE}")), true)
        .expect("send");
    let resp = resp.await.expect("response head");
    assert_eq!(resp.status(), 200);
    let before = rss_kib();
    // The client reads nothing (its window stays shut): the proxy must stop pulling the
    // answer from the instance rather than keep it. The pause is the test: time the proxy
    // would take to buffer the answer (64 MiB on loopback takes well under a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "the proxy grew {grown} KiB for a client that reads nothing"
    );
    // Once the client reads, all of it arrives.
    let mut body = resp.into_body();
    let mut got = 0u64;
    let read = async {
        while let Some(data) = body.data().await {
            let data = data.expect("data");
            got += data.len() as u64;
            let _ = body.flow_control().release_capacity(data.len());
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("read in time");
    assert_eq!(got, SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_drain_a_stream_in_flight_finishes_and_new_ones_are_refused() {
    let (node, port, _inst) = one_app().await;
    let mut send = h2c(port).await;
    let (slow, _) = send.send_request(get("/slow/1000"), true).expect("send");
    // The request reaches the instance before the drain begins.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(async move {
        node.shutdown(Duration::from_secs(10)).await;
    });
    let resp = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("answered in time")
        .expect("the stream in flight finished");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(d) = body.data().await {
        text.extend_from_slice(&d.expect("data"));
    }
    assert_eq!(text, b"alpha\n");
    // The connection said GOAWAY: no new stream on it.
    let refused = match send.ready().await {
        Err(_) => true,
        Ok(mut s) => match s.send_request(get("/"), true) {
            Err(_) => true,
            Ok((r, _)) => r.await.is_err(),
        },
    };
    assert!(refused, "a new stream after the drain was served");
    stopping.await.expect("stopped");
}
