//! An edge-only HTTP/1.1 keep-alive request costs no heap allocation once the node is warm
//! (issue 15 item 6). Every allocation of the process is counted (a counting global allocator
//! around mimalloc, as the binary uses); the client and the instance are plain threads that
//! read and write fixed buffers, so what is counted while requests flow is the node's (and the
//! little that runs in the background: timers, the runtime). The request carries the fields a
//! client behind a load balancer sends (`X-Forwarded-For` among them). A few thousand requests after a
//! warm-up: fewer than one allocation per hundred requests, with the access log off and with
//! the default access log on.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to mimalloc; the counter is a static atomic, so
// counting never allocates or recurses.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARM_UP: usize = 2_000;
const MEASURED: usize = 5_000;
const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: fixed\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An instance that answers every request head with [`ANSWER`], reading into a fixed buffer.
fn instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("instance listens");
    let addr = listener.local_addr().expect("instance address");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut have = 0;
                loop {
                    match conn.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                        if conn.write_all(ANSWER).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                    if have == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `n` requests on one keep-alive connection, each answered 200 with `ok`.
fn requests(conn: &mut TcpStream, n: usize) {
    const REQUEST: &[u8] =
        b"GET /ok?page=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: fixed/1.0\r\nAccept: */*\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n";
    let mut buf = [0u8; 4096];
    for i in 0..n {
        conn.write_all(REQUEST).expect("request written");
        let mut have = 0;
        let whole = loop {
            let read = conn.read(&mut buf[have..]).expect("answer read");
            assert!(read > 0, "the node closed the connection at request {i}");
            have += read;
            if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                if have >= end + 4 + 2 {
                    break &buf[..have];
                }
            }
        };
        assert!(
            whole.starts_with(b"HTTP/1.1 200 ") && whole.ends_with(b"\r\n\r\nok"),
            "request {i}: {}",
            String::from_utf8_lossy(whole)
        );
    }
}

/// Allocations per request on a warm keep-alive connection through a node with `extra` in its
/// `[http]` section.
async fn allocations_per_request(extra: &str) -> f64 {
    let instance = instance();
    let port = free_port();
    let toml = format!(
        "[http]\n{extra}\n[[apps]]\nname = \"app\"\nhostnames = [\"app.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"app-0\"\n  address = \"{instance}\"\n"
    );
    let config = anyedge_config::parse(&toml, "no_alloc.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start(config, None).await.expect("node starts");
    let counted = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        conn.set_nodelay(true).expect("nodelay");
        requests(&mut conn, WARM_UP);
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        requests(&mut conn, MEASURED);
        ALLOCATIONS.load(Ordering::SeqCst) - before
    })
    .await
    .expect("client thread");
    drop(node);
    counted as f64 / MEASURED as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_warm_keep_alive_request_allocates_nothing() {
    let quiet = allocations_per_request("access_log = false").await;
    println!("allocations per request, access log off: {quiet:.4}");
    assert!(
        quiet < 0.01,
        "{quiet:.3} allocations per request with the access log off"
    );
    let logged = allocations_per_request("").await;
    println!("allocations per request, default access log: {logged:.4}");
    assert!(
        logged < 0.01,
        "{logged:.3} allocations per request with the default access log"
    );
}
