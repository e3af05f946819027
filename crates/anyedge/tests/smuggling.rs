//! Request smuggling at the system level: classic CL.TE, TE.CL and TE.TE payloads sent as raw
//! bytes through the proxy to a recording instance. The assertion is on the exact bytes the
//! instance received: they must parse (strictly, `anyedge-http1`) as exactly the requests the
//! client meant and nothing more: never a second, smuggled request, never leftover bytes; and
//! an ambiguous request reaches the instance not at all.

use anyedge::node::Node;
use anyedge_http1::{ChunkedDecoder, Decoded, Framing, Limits, RequestHead, Status};
use anyedge_test_support::free_port;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Every byte each connection to it carried, in order; it answers `200 ok` to each complete
/// request it can parse, and closes a connection it cannot.
#[derive(Clone, Default)]
struct Recorder {
    conns: Arc<Mutex<Vec<Seen>>>,
}

/// The bytes one connection carried.
type Seen = Arc<Mutex<Vec<u8>>>;

/// A request as the instance got it: its request line's target and its body.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    method: String,
    target: String,
    body: Vec<u8>,
}

/// The complete requests at the start of `bytes`, and how many bytes they took.
fn requests(bytes: &[u8]) -> Result<(Vec<Got>, usize), String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let head = match RequestHead::parse(rest, &Limits::default()) {
            Ok(Status::Complete(h)) => h,
            Ok(Status::Partial) => break,
            Err(e) => return Err(format!("unparsable at {at}: {e:?}")),
        };
        let mut body = Vec::new();
        let used = match head.framing {
            Framing::Length(n) => {
                let end = head.len + n as usize;
                if rest.len() < end {
                    break;
                }
                body.extend_from_slice(&rest[head.len..end]);
                end
            }
            Framing::Chunked => {
                let mut d = ChunkedDecoder::default();
                let mut pos = head.len;
                loop {
                    match d.decode(&rest[pos..]) {
                        Ok((used, Decoded::Data(r))) => {
                            body.extend_from_slice(&rest[pos..][r]);
                            pos += used;
                        }
                        Ok((used, Decoded::Done)) => break pos + used,
                        Ok((_, Decoded::NeedMore)) => return Ok((out, at)),
                        Err(e) => return Err(format!("bad chunk: {e:?}")),
                    }
                }
            }
            Framing::None | Framing::UntilClose => head.len,
        };
        out.push(Got {
            method: String::from_utf8_lossy(head.method.of(rest)).into_owned(),
            target: String::from_utf8_lossy(head.target.of(rest)).into_owned(),
            body,
        });
        at += used;
    }
    Ok((out, at))
}

impl Recorder {
    async fn start() -> (Recorder, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rec = Recorder::default();
        let conns = rec.conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new(Vec::new()));
                conns
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(seen.clone());
                tokio::spawn(async move {
                    let mut answered = 0;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let all = {
                            let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                            seen.extend_from_slice(&buf[..n]);
                            seen.clone()
                        };
                        let Ok((done, _)) = requests(&all) else {
                            return;
                        };
                        while answered < done.len() {
                            answered += 1;
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (rec, addr)
    }

    /// Every connection's bytes, parsed: all requests, and whether any bytes were left over.
    fn received(&self) -> Vec<(Vec<Got>, usize)> {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns
            .iter()
            .map(|c| {
                let bytes = c.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let (got, used) = requests(&bytes)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
                (got, bytes.len() - used)
            })
            .collect()
    }
}

async fn node_for(instance: SocketAddr) -> (Node, u16) {
    let port = free_port();
    let toml = format!(
        "[[apps]]\nname = \"alpha\"\nhostnames = [\"alpha.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"alpha-1\"\n  address = \"{instance}\"\n"
    );
    let config = anyedge_config::parse(&toml, "smuggling.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, Some(local(0))).await.expect("node");
    (node, port)
}

/// Send `raw`, then read until the proxy closes (or 3 s pass).
async fn send(port: u16, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(local(port))
        .await
        .expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn count_answers(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_te_the_coding_wins_and_the_rest_is_never_a_request() {
    let (rec, addr) = Recorder::start().await;
    let (_node, port) = node_for(addr).await;
    // A front end that believed Content-Length would send the smuggled request as body; one that
    // believes Transfer-Encoding (as we must) sees an empty body, then the smuggled request.
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let raw = format!(
        "POST /first HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let answer = send(port, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        count_answers(&answer),
        1,
        "the connection closes after it: {answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let got = rec.received();
    let all: Vec<&Got> = got.iter().flat_map(|(g, _)| g).collect();
    assert_eq!(all.len(), 1, "{got:?}");
    assert_eq!(
        (all[0].target.as_str(), all[0].body.as_slice()),
        ("/first", &b""[..])
    );
    assert!(got.iter().all(|(_, left)| *left == 0), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_cl_the_chunked_body_goes_whole_as_one_body() {
    let (rec, addr) = Recorder::start().await;
    let (_node, port) = node_for(addr).await;
    // A back end that believed Content-Length: 4 would take "2c\r\n" as the body and the
    // smuggled request as the next one: the instance must get it re-framed as one body.
    let raw = format!(
        "POST /first HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
        SMUGGLED.len()
    );
    let answer = send(port, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = rec.received();
    let all: Vec<&Got> = got.iter().flat_map(|(g, _)| g).collect();
    assert_eq!(all.len(), 1, "{got:?}");
    assert_eq!(all[0].target, "/first");
    assert_eq!(all[0].body, SMUGGLED.as_bytes());
    assert!(got.iter().all(|(_, left)| *left == 0), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_te_and_length_tricks_reach_no_instance() {
    let (rec, addr) = Recorder::start().await;
    let (node, port) = node_for(addr).await;
    let cases: &[(&str, &str)] = &[
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: x", "400"),
        ("Transfer-Encoding: xchunked", "400"),
        ("Transfer-Encoding : chunked", "400"),
        ("Transfer-Encoding: chunked, identity", "400"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "400",
        ),
        (" Transfer-Encoding: chunked", "400"),
        ("Transfer-Encoding:\u{b}chunked", "400"),
        ("Content-Length: 5\r\nContent-Length: 6", "400"),
        ("Content-Length: +5", "400"),
        ("Content-Length: 0x5", "400"),
        ("Content-Length: 5, 5", "400"),
    ];
    for (fields, status) in cases {
        let raw = format!(
            "POST /first HTTP/1.1\r\nHost: alpha.test\r\n{fields}\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        let answer = send(port, raw.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{fields:?}: {answer}"
        );
        assert_eq!(count_answers(&answer), 1, "{fields:?}: {answer}");
    }
    let got = rec.received();
    assert!(
        got.iter().all(|(g, left)| g.is_empty() && *left == 0),
        "{got:?}"
    );
    let m = node.metrics().render();
    assert!(
        m.contains(&format!(
            "anyedge_node_errors_total{{code=\"bad_request\"}} {}",
            cases.len()
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_reach_the_instance_one_by_one_and_are_answered_in_order() {
    let (rec, addr) = Recorder::start().await;
    let (_node, port) = node_for(addr).await;
    let raw = "GET /1 HTTP/1.1\r\nHost: alpha.test\r\n\r\n\
               POST /2 HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 3\r\n\r\nabc\
               POST /3 HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n\
               GET /4 HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n";
    let answer = send(port, raw.as_bytes()).await;
    assert_eq!(count_answers(&answer), 4, "{answer}");
    let got = rec.received();
    let mut all: Vec<(String, Vec<u8>)> = got
        .iter()
        .flat_map(|(g, _)| g)
        .map(|g| (g.target.clone(), g.body.clone()))
        .collect();
    all.sort();
    assert_eq!(
        all,
        vec![
            ("/1".to_string(), vec![]),
            ("/2".to_string(), b"abc".to_vec()),
            ("/3".to_string(), b"z".to_vec()),
            ("/4".to_string(), vec![]),
        ]
    );
    assert!(got.iter().all(|(_, left)| *left == 0), "{got:?}");
}
