//! The access log, off the request path: one line per request, formatted into a buffer of its
//! shard (the thread it runs on) and written to stderr in batches by a writer thread of its own,
//! as nginx's `access_log ... buffer= flush=`. A request pays for formatting its line and one
//! uncontended lock; it never waits for stderr. Batches go out when a shard's buffer passes
//! [`FLUSH_BYTES`], at least every [`FLUSH_EVERY`], and on [`flush`] (drain and stop). A buffer
//! never grows past [`MAX_BUFFERED`]: while the writer is stuck (a full pipe) lines are dropped
//! and counted ([`dropped`]), never queued without bound.
//!
//! Lines keep the format of the node's other logs (`--log-format`): text
//! `<time>  INFO anyedge::access: request_id=.. app=.. ...` or one JSON object with
//! `"target":"anyedge::access"`. `ANYEDGE_LOG` filters them like any other line (target
//! `anyedge::access`, level INFO).

use crate::LogFormat;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A shard's buffer is handed to the writer once it holds this much.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Lines wait at most this long.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A shard buffers at most this much while the writer cannot keep up; past it lines are dropped.
pub const MAX_BUFFERED: usize = 4 << 20;
/// Buffers, one per thread that logs (threads are assigned round robin past this many).
const SHARDS: usize = 16;

/// One request's line.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub app: &'a str,
    pub instance: &'a str,
    pub status: u16,
    /// The proxy's error code, or empty.
    pub code: &'a str,
    /// Whose fault the error was, or empty.
    pub fault: &'a str,
    pub attempts: u32,
    pub replays: u32,
    pub bytes_out: u64,
    /// Phase timings, in microseconds (written as milliseconds with three decimals).
    pub queue_us: u64,
    pub connect_us: u64,
    pub first_byte_us: u64,
    pub total_us: u64,
}

struct Log {
    json: AtomicBool,
    shards: Vec<Mutex<Vec<u8>>>,
    dropped: AtomicU64,
    next_shard: AtomicUsize,
    writer: OnceLock<std::thread::Thread>,
}

fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| Log {
        json: AtomicBool::new(false),
        shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        dropped: AtomicU64::new(0),
        next_shard: AtomicUsize::new(0),
        writer: OnceLock::new(),
    })
}

/// The lines' format (set by `init_logging`).
pub(crate) fn set_format(format: LogFormat) {
    log()
        .json
        .store(format == LogFormat::Json, Ordering::Relaxed);
}

thread_local! {
    static SHARD: usize = log().next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// Log one request, if `ANYEDGE_LOG` lets `anyedge::access` INFO lines through.
pub fn record(line: &AccessLine<'_>) {
    if !tracing::enabled!(target: "anyedge::access", tracing::Level::INFO) {
        return;
    }
    let log = log();
    let shard = SHARD.with(|s| *s);
    let mut buf = log.shards[shard]
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if buf.len() >= MAX_BUFFERED {
        log.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if log.json.load(Ordering::Relaxed) {
        write_json(&mut buf, line);
    } else {
        write_text(&mut buf, line);
    }
    let full = buf.len() >= FLUSH_BYTES;
    drop(buf);
    let writer = log.writer.get_or_init(start_writer);
    if full {
        writer.unpark();
    }
}

/// Lines dropped because the writer could not keep up.
pub fn dropped() -> u64 {
    log().dropped.load(Ordering::Relaxed)
}

/// Write every buffered line now (the node calls it when it stops).
pub fn flush() {
    let log = log();
    let mut out = std::io::stderr().lock();
    for shard in &log.shards {
        let batch = std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner));
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
        }
    }
    let _ = out.flush();
}

fn start_writer() -> std::thread::Thread {
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(|| loop {
            std::thread::park_timeout(FLUSH_EVERY);
            flush();
        });
    match spawned {
        Ok(handle) => handle.thread().clone(),
        // No thread: lines stay buffered up to MAX_BUFFERED (then dropped) and `flush` at stop
        // writes them; unparking the current thread is harmless.
        Err(_) => std::thread::current(),
    }
}

// Lines are written straight into the shard's buffer, each key with its separators as one
// literal: a `String` per line and three small copies per field were most of a line's cost
// (callgrind: 3,800 instructions per request with the log on, a quarter of them `memcpy`).

fn write_text(buf: &mut Vec<u8>, l: &AccessLine<'_>) {
    buf.reserve(256);
    timestamp(buf);
    buf.extend_from_slice(b"  INFO anyedge::access: request_id=");
    buf.extend_from_slice(l.request_id.as_bytes());
    buf.extend_from_slice(b" app=");
    buf.extend_from_slice(l.app.as_bytes());
    buf.extend_from_slice(b" instance=");
    buf.extend_from_slice(l.instance.as_bytes());
    buf.extend_from_slice(b" status=");
    push_u64(buf, u64::from(l.status));
    buf.extend_from_slice(b" code=");
    buf.extend_from_slice(l.code.as_bytes());
    buf.extend_from_slice(b" fault=");
    buf.extend_from_slice(l.fault.as_bytes());
    numbers(buf, l, &TEXT_KEYS);
    buf.push(b'\n');
}

fn write_json(buf: &mut Vec<u8>, l: &AccessLine<'_>) {
    buf.reserve(320);
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"anyedge::access\"");
    for (key, v) in [
        (&b",\"request_id\":\""[..], l.request_id),
        (b",\"app\":\"", l.app),
        (b",\"instance\":\"", l.instance),
        (b",\"code\":\"", l.code),
        (b",\"fault\":\"", l.fault),
    ] {
        buf.extend_from_slice(key);
        json_escape(buf, v);
        buf.push(b'"');
    }
    buf.extend_from_slice(b",\"status\":");
    push_u64(buf, u64::from(l.status));
    numbers(buf, l, &JSON_KEYS);
    buf.extend_from_slice(b"}\n");
}

/// The keys of [`numbers`], with their separators: attempts, replays, bytes out, then the four
/// timings.
type Keys = [&'static [u8]; 7];
const TEXT_KEYS: Keys = [
    b" attempts=",
    b" replays=",
    b" bytes_out=",
    b" queue_ms=",
    b" connect_ms=",
    b" first_byte_ms=",
    b" total_ms=",
];
const JSON_KEYS: Keys = [
    b",\"attempts\":",
    b",\"replays\":",
    b",\"bytes_out\":",
    b",\"queue_ms\":",
    b",\"connect_ms\":",
    b",\"first_byte_ms\":",
    b",\"total_ms\":",
];

/// The counts and timings, without the formatting machinery.
fn numbers(buf: &mut Vec<u8>, l: &AccessLine<'_>, keys: &Keys) {
    let counts = [u64::from(l.attempts), u64::from(l.replays), l.bytes_out];
    for (key, v) in keys[..3].iter().zip(counts) {
        buf.extend_from_slice(key);
        push_u64(buf, v);
    }
    let timings = [l.queue_us, l.connect_us, l.first_byte_us, l.total_us];
    for (key, us) in keys[3..].iter().zip(timings) {
        buf.extend_from_slice(key);
        push_u64(buf, us / 1000);
        let frac = us % 1000;
        buf.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }
}

fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

fn json_escape(out: &mut Vec<u8>, v: &str) {
    for &b in v.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if b < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            b => out.push(b),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), the date part formatted once per second per thread.
fn timestamp(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            c.1.clear();
            civil(&mut c.1, secs);
            c.0 = secs;
        }
        out.extend_from_slice(c.1.as_bytes());
    });
    let micros = now.subsec_micros();
    let mut frac = [b'.', 0, 0, 0, 0, 0, 0, b'Z'];
    let mut div = 100_000;
    for d in &mut frac[1..7] {
        *d = b'0' + (micros / div % 10) as u8;
        div /= 10;
    }
    out.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC; days to civil date after Howard Hinnant).
fn civil(out: &mut String, secs: u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> AccessLine<'static> {
        AccessLine {
            request_id: "01J-ord",
            app: "web",
            instance: "web-1",
            status: 200,
            code: "",
            fault: "",
            attempts: 1,
            replays: 0,
            bytes_out: 42,
            queue_us: 250,
            connect_us: 500,
            first_byte_us: 1000,
            total_us: 12_345_678,
        }
    }

    #[test]
    fn dates_are_civil_utc() {
        let mut s = String::new();
        civil(&mut s, 0);
        assert_eq!(s, "1970-01-01T00:00:00");
        s.clear();
        civil(&mut s, 1_796_611_277);
        assert_eq!(s, "2026-12-07T02:41:17");
        s.clear();
        civil(&mut s, 951_782_400); // a leap day
        assert_eq!(s, "2000-02-29T00:00:00");
    }

    #[test]
    fn text_and_json_lines_carry_every_field() {
        let mut buf = Vec::new();
        write_text(&mut buf, &line());
        let text = String::from_utf8(buf).expect("utf-8");
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        assert!(
            text.contains("INFO anyedge::access: request_id=01J-ord app=web instance=web-1 status=200 code= fault= attempts=1 replays=0 bytes_out=42 queue_ms=0.250 connect_ms=0.500 first_byte_ms=1.000 total_ms=12345.678\n"),
            "{text}"
        );
        let mut buf = Vec::new();
        let mut l = line();
        l.app = "we\"b";
        l.instance = "a\u{1}\\b";
        write_json(&mut buf, &l);
        let json = String::from_utf8(buf).expect("utf-8");
        assert!(
            json.starts_with("{\"timestamp\":\"") && json.ends_with("}\n"),
            "{json}"
        );
        assert!(
            json.contains(
                "\"target\":\"anyedge::access\",\"request_id\":\"01J-ord\",\"app\":\"we\\\"b\""
            ),
            "{json}"
        );
        assert!(json.contains("\"instance\":\"a\\u0001\\\\b\""), "{json}");
        assert!(
            json.contains(
                "\"status\":200,\"attempts\":1,\"replays\":0,\"bytes_out\":42,\"queue_ms\":0.250"
            ),
            "{json}"
        );
    }
}
