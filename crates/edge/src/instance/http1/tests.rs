//! The client against scripted instances on loopback: what it writes, and what it makes of
//! what they answer.

use super::*;
use anyedge_telemetry::AppMetrics;
use http::Request;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(10);

/// A client body fed through a channel: frames arrive when the test sends them.
struct Chan(mpsc::Receiver<Frame<Bytes>>);

impl Body for Chan {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn body_of(chunks: &[&[u8]]) -> ReqBody<Chan> {
    let (tx, rx) = mpsc::channel(chunks.len().max(1));
    for c in chunks {
        tx.try_send(Frame::data(Bytes::copy_from_slice(c)))
            .expect("room");
    }
    drop(tx);
    ReqBody::new(Chan(rx), 1 << 20, 0, Arc::new(AppMetrics::default()))
}

fn request(method: &str, headers: &[(&str, &str)], body: ReqBody<Chan>) -> Request<ReqBody<Chan>> {
    let mut b = Request::builder().method(method).uri("/path?q=1");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(body).expect("request")
}

/// An instance that reads one request head (and `body` more bytes), records what it got and
/// writes `answer`; then, with `close`, closes.
async fn instance(
    answer: &'static [u8],
    body: usize,
    close: bool,
) -> (TcpStream, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let got = read_request(&mut s, body).await;
        s.write_all(answer).await.expect("answer");
        if !close {
            // Hold the connection until the client is done with it.
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut rest)).await;
        }
        got
    });
    let io = TcpStream::connect(addr).await.expect("connect");
    (io, task)
}

async fn read_request(s: &mut TcpStream, body: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= end + 4 + body {
                return got;
            }
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn collect(body: H1Body) -> Result<(Vec<u8>, Option<HeaderMap>), ResponseBodyError> {
    let all = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("in time")?;
    let trailers = all.trailers().cloned();
    Ok((all.to_bytes().to_vec(), trailers))
}

async fn send_to(
    io: TcpStream,
    req: Request<ReqBody<Chan>>,
    pool: &Arc<UpstreamPool>,
) -> Result<Response<H1Body>, H1Error> {
    let (parts, body) = req.into_parts();
    let sending = send(io, Outbound::of(&parts), body, pool.clone());
    tokio::time::timeout(DEADLINE, sending)
        .await
        .expect("in time")
}

/// A GET to an instance that answers `answer` (then closes, with `close`), and the pool its
/// connection goes back to.
async fn get(
    answer: &'static [u8],
    close: bool,
) -> (Result<Response<H1Body>, H1Error>, Arc<UpstreamPool>) {
    let (io, _inst) = instance(answer, 0, close).await;
    let pool = Arc::new(UpstreamPool::default());
    let sent = send_to(io, request("GET", &[], ReqBody::Empty), &pool).await;
    (sent, pool)
}

#[tokio::test]
async fn a_get_is_written_as_received_and_its_connection_pooled_after_the_body() {
    let (io, inst) = instance(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        0,
        false,
    )
    .await;
    let pool = Arc::new(UpstreamPool::default());
    let req = request(
        "GET",
        &[("host", "example.com"), ("x-one", "1")],
        ReqBody::Empty,
    );
    let resp = send_to(io, req, &pool).await.expect("answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-a"], "b");
    assert_eq!(resp.body().size_hint().exact(), Some(5));
    assert_eq!(pool.idle_len(), 0, "not before the body was read");
    let (body, _) = collect(resp.into_body()).await.expect("body");
    assert_eq!(body, b"hello");
    assert_eq!(pool.idle_len(), 1, "back in the pool");
    let got = inst.await.expect("instance");
    assert_eq!(
        got,
        b"GET /path?q=1 HTTP/1.1\r\nhost: example.com\r\nx-one: 1\r\n\r\n"
    );
}

#[tokio::test]
async fn a_post_with_a_length_goes_out_with_it_in_one_write() {
    let (io, inst) = instance(b"HTTP/1.1 204 No Content\r\n\r\n", 10, false).await;
    let pool = Arc::new(UpstreamPool::default());
    let req = request(
        "POST",
        &[("content-length", "10")],
        body_of(&[b"01234", b"56789"]),
    );
    let resp = send_to(io, req, &pool).await.expect("answered");
    assert_eq!(resp.status(), 204);
    assert!(resp.body().is_end_stream());
    assert_eq!(pool.idle_len(), 1, "no body: pooled at once");
    let got = inst.await.expect("instance");
    assert_eq!(
        got,
        b"POST /path?q=1 HTTP/1.1\r\ncontent-length: 10\r\n\r\n0123456789"
    );
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_chunked_with_its_trailers() {
    let (io, inst) = instance(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, false).await;
    let pool = Arc::new(UpstreamPool::default());
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(Frame::data(Bytes::from_static(b"abc")))
        .expect("room");
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    tx.try_send(Frame::trailers(t)).expect("room");
    drop(tx);
    let body = ReqBody::new(Chan(rx), 1 << 20, 0, Arc::new(AppMetrics::default()));
    let resp = send_to(io, request("PUT", &[], body), &pool)
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let got = String::from_utf8(inst.await.expect("instance")).expect("text");
    assert!(
        got.starts_with("PUT /path?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"),
        "{got}"
    );
    assert!(
        got.ends_with("3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"),
        "{got}"
    );
}

#[tokio::test]
async fn an_empty_post_says_so() {
    let (io, inst) = instance(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, false).await;
    let pool = Arc::new(UpstreamPool::default());
    send_to(io, request("POST", &[], ReqBody::Empty), &pool)
        .await
        .expect("answered");
    assert_eq!(
        inst.await.expect("instance"),
        b"POST /path?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
    );
}

#[tokio::test]
async fn chunked_responses_are_decoded_with_their_trailers() {
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
    let (sent, pool) = get(answer, false).await;
    let resp = sent.expect("answered");
    let (body, trailers) = collect(resp.into_body()).await.expect("body");
    assert_eq!(body, b"hello world");
    assert_eq!(trailers.expect("trailers")["x-sum"], "42");
    assert_eq!(pool.idle_len(), 1);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let resp = get(answer, false).await.0.expect("answered");
    assert_eq!(resp.status(), 201);
    assert_eq!(collect(resp.into_body()).await.expect("body").0, b"ok");
}

#[tokio::test]
async fn a_body_until_close_is_read_to_the_close_and_not_pooled() {
    let (sent, pool) = get(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
    let resp = sent.expect("answered");
    assert_eq!(
        collect(resp.into_body()).await.expect("body").0,
        b"until the end"
    );
    assert_eq!(pool.idle_len(), 0);
}

#[tokio::test]
async fn connections_that_cannot_carry_another_request_are_not_pooled() {
    let answers: [&'static [u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        // Bytes after the response: not a response to anything we asked.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
    ];
    for answer in answers {
        let (sent, pool) = get(answer, false).await;
        let resp = sent.expect("answered");
        assert_eq!(collect(resp.into_body()).await.expect("body").0, b"ok");
        assert_eq!(pool.idle_len(), 0, "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn a_head_response_has_no_body_whatever_its_length() {
    let (io, _inst) = instance(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 0, false).await;
    let pool = Arc::new(UpstreamPool::default());
    let resp = send_to(io, request("HEAD", &[], ReqBody::Empty), &pool)
        .await
        .expect("answered");
    assert_eq!(resp.headers()["content-length"], "100");
    assert!(resp.body().is_end_stream());
    assert_eq!(pool.idle_len(), 1);
}

#[tokio::test]
async fn bad_answers_are_errors() {
    type Case = (&'static [u8], fn(&H1Error) -> bool);
    let cases: [Case; 4] = [
        (b"", |e| {
            matches!(e, H1Error::Closed) && e.closed_before_response()
        }),
        (b"HTTP/1.1 200 OK\r\nContent-", |e| {
            matches!(e, H1Error::ClosedInHead) && !e.closed_before_response()
        }),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            |e| matches!(e, H1Error::Head(_)),
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
            |e| matches!(e, H1Error::Switched),
        ),
    ];
    for (answer, expected) in cases {
        match get(answer, true).await.0 {
            Err(e) => assert!(
                expected(&e),
                "{e:?} for {}",
                String::from_utf8_lossy(answer)
            ),
            Ok(r) => panic!(
                "answered {} to {}",
                r.status(),
                String::from_utf8_lossy(answer)
            ),
        }
    }
}

#[tokio::test]
async fn a_truncated_body_is_an_error_and_the_connection_closes() {
    let (sent, pool) = get(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true).await;
    let resp = sent.expect("answered");
    assert!(matches!(
        collect(resp.into_body()).await,
        Err(ResponseBodyError::Truncated)
    ));
    assert_eq!(pool.idle_len(), 0);
}

/// The case hyper's client lost: an instance that answers at once and closes without reading
/// the body (a replay request, a 413) is answered, although writing the body then fails.
#[tokio::test]
async fn an_answer_before_the_body_was_read_is_used_even_when_the_write_fails() {
    for _ in 0..20 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let inst = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            read_request(&mut s, 0).await;
            s.write_all(b"HTTP/1.1 409 Conflict\r\nContent-Length: 4\r\n\r\nelse")
                .await
                .expect("answer");
            // Closed with the body unread: the kernel resets the connection.
        });
        let io = TcpStream::connect(addr).await.expect("connect");
        let big = vec![b'x'; 4 << 20];
        let pool = Arc::new(UpstreamPool::default());
        let req = request("POST", &[("content-length", "4194304")], body_of(&[&big]));
        let resp = send_to(io, req, &pool)
            .await
            .expect("the answer, not the write error");
        assert_eq!(resp.status(), 409);
        inst.await.expect("instance");
        assert_eq!(collect(resp.into_body()).await.expect("body").0, b"else");
        assert_eq!(pool.idle_len(), 0, "the body was not written whole");
    }
}

/// An instance that streams its answer while the body still comes (full duplex, as an echo
/// does): the rest of the body is written as the response is read.
#[tokio::test]
async fn the_body_goes_on_while_an_early_answer_streams() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let inst = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let got = read_request(&mut s, 0).await;
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .expect("head");
        // Echo what comes, chunk by chunk, until the request's last chunk.
        let mut seen = got[end..].to_vec();
        let mut buf = [0u8; 1024];
        while !seen.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "the body must go on");
            seen.extend_from_slice(&buf[..n]);
            let chunk = &buf[..n];
            s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .expect("echo");
            s.write_all(chunk).await.expect("echo");
            s.write_all(b"\r\n").await.expect("echo");
        }
        s.write_all(b"0\r\n\r\n").await.expect("end");
        seen
    });
    let io = TcpStream::connect(addr).await.expect("connect");
    let (tx, rx) = mpsc::channel(4);
    let body = ReqBody::new(Chan(rx), 1 << 20, 0, Arc::new(AppMetrics::default()));
    let pool = Arc::new(UpstreamPool::default());
    let mut resp = send_to(io, request("POST", &[], body), &pool)
        .await
        .expect("early answer");
    assert_eq!(resp.status(), 200);
    for word in ["ping", "pong"] {
        tx.send(Frame::data(Bytes::from_static(word.as_bytes())))
            .await
            .expect("send");
        let mut echoed = Vec::new();
        while !String::from_utf8_lossy(&echoed).contains(word) {
            let frame = tokio::time::timeout(DEADLINE, resp.body_mut().frame())
                .await
                .expect("in time")
                .expect("a frame")
                .expect("ok");
            echoed.extend_from_slice(&frame.into_data().expect("data"));
        }
    }
    drop(tx);
    let (rest, _) = collect(resp.into_body()).await.expect("the end");
    let seen = String::from_utf8(inst.await.expect("instance")).expect("text");
    assert!(
        seen.contains("ping") && seen.contains("pong"),
        "{seen} {rest:?}"
    );
    assert_eq!(pool.idle_len(), 1, "written whole and read whole");
}

#[tokio::test]
async fn a_stale_idle_connection_is_not_taken() {
    let (io, inst) = instance(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, true).await;
    let pool = Arc::new(UpstreamPool::default());
    let resp = send_to(io, request("GET", &[], ReqBody::Empty), &pool)
        .await
        .expect("answered");
    drop(resp);
    assert_eq!(pool.idle_len(), 1);
    inst.await.expect("instance closed its side");
    // The close reaches the socket's readiness through the reactor, while the task sleeps.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Some(io) = pool.take_idle(Duration::from_secs(60)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection is never taken"
        );
        pool.put(io);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pool.idle_len(), 0, "and it was closed");
}

#[tokio::test]
async fn idle_connections_past_the_idle_timeout_close() {
    let (sent, pool) = get(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false).await;
    drop(sent.expect("answered"));
    assert_eq!(pool.idle_len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(pool.take_idle(Duration::from_millis(10)).is_none());
    assert_eq!(pool.idle_len(), 0);
}

#[tokio::test]
async fn hop_by_hop_fields_of_the_answer_are_left_out() {
    let answers: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Kept: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        // `Connection` naming a field: that one goes too.
        b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
    ];
    for answer in answers {
        let resp = get(answer, false).await.0.expect("answered");
        let names: Vec<&str> = resp.headers().keys().map(|n| n.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| *n == "x-kept" || *n == "content-length"),
            "{names:?}"
        );
        assert_eq!(resp.headers()["x-kept"], "1");
        assert_eq!(collect(resp.into_body()).await.expect("body").0, b"ok");
    }
}

/// A client body that breaks its own Content-Length is the client's fault (a body error, 400),
/// never counted against the instance.
#[tokio::test]
async fn a_body_that_breaks_its_length_is_the_clients_fault() {
    let (io, _inst) = instance(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 10, false).await;
    let pool = Arc::new(UpstreamPool::default());
    let req = request("POST", &[("content-length", "10")], body_of(&[b"short"]));
    match send_to(io, req, &pool).await {
        Err(e) => {
            assert!(matches!(e, H1Error::Body(BodyError::Read(_))), "{e:?}");
            let failure = super::super::pool::Failure::H1(e);
            assert!(
                failure.body_error().is_some(),
                "the client's, not the instance's"
            );
        }
        Ok(r) => panic!("answered {}", r.status()),
    }
}

/// Without any request to the pool, the sweep closes an idle connection the instance closed
/// (it would otherwise stay open until the pool is next used or dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_sweep_closes_idle_connections_the_instance_closed() {
    let (io, inst) = instance(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, true).await;
    let pool = Arc::new(UpstreamPool::default());
    let resp = send_to(io, request("GET", &[], ReqBody::Empty), &pool)
        .await
        .expect("answered");
    drop(resp);
    assert_eq!(pool.idle_len(), 1);
    inst.await.expect("instance closed its side");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while pool.idle_len() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep never closed it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_sweep_closes_idle_connections_past_the_idle_timeout() {
    let (io, inst) = instance(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, false).await;
    let pool = Arc::new(UpstreamPool::default());
    // (The instance holds its side 300 ms.) A request's idle timeout (here: none idle to take yet).
    assert!(pool.take_idle(Duration::from_millis(200)).is_none());
    let resp = send_to(io, request("GET", &[], ReqBody::Empty), &pool)
        .await
        .expect("answered");
    drop(resp);
    assert_eq!(pool.idle_len(), 1);
    assert!(pool.sweep(), "still fresh: kept");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !pool.sweep(),
        "expired: closed, and the pool leaves the list"
    );
    assert_eq!(pool.idle_len(), 0);
    drop(inst);
}
