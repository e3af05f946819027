//! Dev-only helpers for system tests: fake TCP instances, child processes stopped by pid,
//! free ports, descriptor counts, and polling with a deadline instead of sleeping.

pub mod browser;
pub mod client;
pub mod cluster;
pub mod etcd;
pub mod fuzz;
pub mod http_client;
pub mod http_instance;
pub mod instances;
pub mod pebble;
pub mod pki;
pub mod process;
pub mod relay;
pub mod runtimes;
pub mod scripted_instance;

use std::time::{Duration, Instant};

/// Poll `check` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port free on every address right now, for config files that need numbers.
///
/// Chosen outside the kernel's ephemeral range (32768-60999 here), so no outgoing connection
/// takes it between this check and the test's bind, and never the same one twice in a process.
/// The wildcard check matters: a listener on `[::]:P` conflicts with any socket on port P.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    let seed = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (seed + k.wrapping_mul(7_919)) % SPAN) as u16;
        let wildcard = std::net::TcpListener::bind(("::", port)).is_ok()
            || std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
        if wildcard && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN)
}

/// Open descriptors of a process (`/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of a process (`/proc/<pid>/task`); tasks leaking show up as memory, threads as this.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}
