//! The server over in-memory I/O with `h2`'s client: keep-alive pings, a reset stream's request
//! cancelled, a response body pulled no further than the client's window.

use super::*;
use http_body::Frame;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Context;
use tokio::io::DuplexStream;
use tokio::sync::{oneshot, Notify};

fn settings() -> Settings {
    Settings {
        max_concurrent_streams: 100,
        max_header_list_size: 16 * 1024,
        max_pending_accept_reset_streams: 50,
        max_local_error_reset_streams: DEFAULT_LOCAL_ERROR_RESETS,
        stream_window: DEFAULT_WINDOW,
        connection_window: DEFAULT_WINDOW,
        max_send_buffer: DEFAULT_SEND_BUFFER,
        ping_interval: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(1),
        idle: None,
    }
}

/// A client on `io` whose connection is driven until `hang` is notified, then held unpolled
/// (a peer that stops reading and answering).
async fn client(io: DuplexStream, hang: Arc<Notify>) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(io).await.expect("client handshake");
    tokio::spawn(async move {
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = hang.notified() => {}
        }
        std::future::pending::<()>().await;
    });
    send
}

/// A body of 16 KiB chunks, 32 MiB in all (more than a test reads: "endless"; bounded so that a
/// server that ignores flow control fails the test instead of filling memory), counting what
/// was taken from it.
struct Endless(Arc<AtomicU64>);

const ENDLESS: u64 = 32 * 1024 * 1024;

impl Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.0.fetch_add(16 * 1024, Ordering::Relaxed) >= ENDLESS {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_answering_pings_is_dropped() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        serve(s, &settings(), std::future::pending(), |_req| async {
            Response::new(http_body_util::Empty::<Bytes>::new())
        })
        .await
    });
    let hang = Arc::new(Notify::new());
    let _send = client(c, hang.clone()).await;
    // Answering: the connection stays through many pings.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!server.is_finished());
    hang.notify_one();
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("dropped in time")
        .expect("server task");
    assert!(started.elapsed() <= Duration::from_secs(2) + Duration::from_millis(50));
    assert!(matches!(ended, Err(Ended::PingTimeout(_))), "{ended:?}");
}

#[tokio::test]
async fn a_stream_the_client_resets_cancels_its_request() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (held_tx, held) = oneshot::channel::<oneshot::Sender<()>>();
    let mut held_tx = Some(held_tx);
    tokio::spawn(async move {
        serve(s, &settings(), std::future::pending(), move |_req| {
            // The request's future holds `alive` until it is dropped.
            let (alive, gone) = oneshot::channel::<()>();
            if let Some(tx) = held_tx.take() {
                let _ = tx.send(alive);
            }
            async move {
                let _ = gone.await;
                Response::new(http_body_util::Empty::<Bytes>::new())
            }
        })
        .await
    });
    let mut send = client(c, Arc::new(Notify::new())).await;
    let req = Request::get("http://a.test/").body(()).expect("request");
    let (resp, _) = send.send_request(req, true).expect("send");
    let mut alive = held.await.expect("the request reached the server");
    // Dropping the response future resets the stream (CANCEL).
    drop(resp);
    tokio::time::timeout(Duration::from_secs(5), alive.closed())
        .await
        .expect("the request's future was dropped");
}

#[tokio::test]
async fn an_answer_is_pulled_no_further_than_the_clients_window() {
    let (c, s) = tokio::io::duplex(1024 * 1024);
    let taken = Arc::new(AtomicU64::new(0));
    let counted = taken.clone();
    tokio::spawn(async move {
        serve(s, &settings(), std::future::pending(), move |_req| {
            let body = Endless(counted.clone());
            async move { Response::new(body) }
        })
        .await
    });
    let mut send = client(c, Arc::new(Notify::new())).await;
    let req = Request::get("http://a.test/").body(()).expect("request");
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = resp.await.expect("head");
    // The client reads nothing: its window (64 KiB - 1) stays shut.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pulled = taken.load(Ordering::Relaxed);
    assert!(pulled <= 65_535 + 2 * 16 * 1024, "pulled {pulled} bytes");
    // Reading opens the window again, and more is pulled.
    let mut body = resp.into_body();
    let mut got = 0;
    while got < 1024 * 1024 {
        let d = body.data().await.expect("more").expect("data");
        got += d.len();
        let _ = body.flow_control().release_capacity(d.len());
    }
    assert!(taken.load(Ordering::Relaxed) >= 1024 * 1024);
}
