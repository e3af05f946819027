//! HTTP/2 client connections are idle by streams, not bytes: a client that trickles a HEADERS
//! frame a byte at a time (the HTTP/2 slowloris) is closed at the header timeout although every
//! byte arrives in time, a connection with a stream open longer than the idle timeout keeps it,
//! and one whose last stream ended is closed after the idle timeout.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::Client;
use anyedge_test_support::http_instance::HttpInstance;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn one_app() -> (Node, u16, HttpInstance) {
    let inst = HttpInstance::start("alpha", false).await;
    let port = free_port();
    let toml = format!(
        "[http]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"1s\"\n[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"alpha-1\"\n  address = \"{}\"\n",
        inst.addr
    );
    let config = anyedge_config::parse(&toml, "h2.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(local(0))).await.expect("node");
    (node, port, inst)
}

/// The client's connection preface and an empty SETTINGS frame.
async fn h2c_start(s: &mut TcpStream) {
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
}

/// Reads until EOF or an error; whether that came within `wait`.
async fn closed_within(s: &mut (impl AsyncRead + Unpin), wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // SETTINGS, acks, GOAWAY
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_headers_frame_is_closed_at_the_header_timeout() {
    let (_node, port, inst) = one_app().await;
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    h2c_start(&mut s).await;
    // A HEADERS frame on stream 1 announcing 200 bytes of header block, sent a byte every
    // 50 ms: each byte is in time, the frame is done in 10 s.
    s.write_all(&[0, 0, 200, 1, 0x05, 0, 0, 0, 1])
        .await
        .expect("frame head");
    let (mut r, mut w) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if w.write_all(&[0x82]).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let closed = closed_within(&mut r, Duration::from_secs(4)).await;
    trickle.abort();
    assert!(
        closed,
        "a trickling client kept its connection past the timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(inst.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_keeps_its_connection_and_an_idle_one_is_closed() {
    let (_node, port, _inst) = one_app().await;
    let mut client = Client::h2c(local(port)).await;
    // A stream open for 2.5 s, past the 1 s idle timeout: answered on the same connection.
    let started = Instant::now();
    let (status, _, body) = client.get("alpha.test", "/slow/2500").await;
    assert_eq!((status, body.as_str()), (200, "alpha\n"));
    assert!(started.elapsed() >= Duration::from_millis(2400));
    let (status, _, _) = client.get("alpha.test", "/").await;
    assert_eq!(status, 200, "the connection outlived its long stream");

    // Raw: a request, then nothing; closed about 1 s after its stream ended.
    let mut s = TcpStream::connect(local(port)).await.expect("connect");
    h2c_start(&mut s).await;
    assert!(
        !closed_within(&mut s, Duration::from_millis(300)).await,
        "closed before its header timeout"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "an idle connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_keeps_its_connection_past_the_idle_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};
    let (_node, port, _inst) = one_app().await;
    let mut c = Client::h2c(local(port)).await;
    let mut req = anyedge_test_support::http_client::request("CONNECT", "alpha.test", "/ws", true)
        .header("sec-websocket-version", "13")
        .body(anyedge_test_support::http_client::empty())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = c.send(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let upgraded = hyper::upgrade::on(resp).await.expect("tunnel");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    // Quiet for 2.5 s: past the idle timeout (1 s) and the closing grace (0.5 s) after it. The
    // tunnel is an open stream: the connection stays, and the WebSocket with it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(Message::text("still here")).await.expect("send");
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(back, Message::text("still here"));
}
