//! The spill store: request bodies past `replay_body_limit` kept on disk, so a replay or a
//! safe retry can send them again (`[http] replay_spill_dir`, `replay_spill_limit`;
//! `docs/http.md`, "Replay of large bodies").
//!
//! One file per request, made with `O_EXCL` and mode 0600 under a random name, and unlinked
//! at once (as nginx does with its client body files): the request holds the only reference,
//! its descriptor, so the space is freed when the request ends however it ends, and a crash
//! leaves nothing behind but what a crash between the two calls could. Start-up removes such
//! leftovers (`anyedge-spill-*`), which is safe while another process uses the directory too
//! (an upgrade): its files have no names any more.
//!
//! Writes never run on a worker thread: a page-cache write is a few microseconds on average,
//! but single writes were measured taking 12-56 ms here (the kernel making the writer wait for
//! the disk), and a worker thread serves every connection of its shard. An append queues the
//! chunk (the client's own `Bytes`, no copy) and one blocking-pool task per file writes the
//! queue out in order; past [`MAX_QUEUED`] unwritten bytes the client's body is not read on
//! until the writer catches up. A replay reads what is written from the file, in place (at
//! most [`READ_CHUNK`] bytes, just written, so from the page cache), and the rest from the
//! queue.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyedge_telemetry::Metrics;
use bytes::{Bytes, BytesMut};

/// What a spill file's name starts with (the rest is 32 random hex digits).
const PREFIX: &str = "anyedge-spill-";

/// The most one read from a spill file brings back.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Why the spill directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[http] replay_spill_dir {dir}: {what}: {source}")]
pub struct SpillDirError {
    dir: PathBuf,
    what: &'static str,
    source: io::Error,
}

/// The node's spill store: its directory and its byte cap. The bytes in use are
/// `anyedge_replay_spill_bytes` (the node's metrics hold the count).
pub(crate) struct SpillStore {
    dir: PathBuf,
    limit: AtomicU64,
    metrics: Arc<Metrics>,
}

impl SpillStore {
    /// Make the directory if missing (0700), check it is a directory we can write, and remove
    /// what a crash left there.
    pub fn open(
        dir: &Path,
        limit: u64,
        metrics: Arc<Metrics>,
    ) -> Result<SpillStore, SpillDirError> {
        let fail = |what, source| SpillDirError {
            dir: dir.to_path_buf(),
            what,
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("cannot create it", e))?;
        let meta = std::fs::metadata(dir).map_err(|e| fail("cannot read it", e))?;
        if !meta.is_dir() {
            let e = io::Error::new(io::ErrorKind::NotADirectory, "it is not a directory");
            return Err(fail("not usable", e));
        }
        if meta.uid() != euid() && meta.mode() & 0o1000 == 0 && meta.mode() & 0o022 != 0 {
            // Someone else's directory that others may write and that has no sticky bit:
            // another user could rename our files away. Files are unlinked at once, but the
            // directory is the operator's promise that bodies stay private.
            let e = io::Error::new(
                io::ErrorKind::PermissionDenied,
                "owned by another user and writable by others without the sticky bit",
            );
            return Err(fail("not safe", e));
        }
        let removed = remove_stale(dir).map_err(|e| fail("cannot list it", e))?;
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "removed spill files left by a crash");
        }
        let store = SpillStore {
            dir: dir.to_path_buf(),
            limit: AtomicU64::new(limit),
            metrics,
        };
        // A file made and unlinked proves we may write there.
        let probe = store
            .create()
            .map_err(|e| fail("cannot write a file in it", e))?;
        drop(probe);
        Ok(store)
    }

    /// A new reload's cap (the directory is read at start only).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    #[cfg(test)]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn used(&self) -> &AtomicU64 {
        &self.metrics.node.spill_bytes
    }

    /// A new unlinked file, 0600, under a random name.
    fn create(&self) -> io::Result<File> {
        let mut last = None;
        for _ in 0..4 {
            let name = format!("{PREFIX}{:032x}", rand::random::<u128>());
            let path = self.dir.join(name);
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            match opened {
                Ok(file) => {
                    // The name goes at once: the descriptor is the only way in from now on.
                    // (A start-up cleaning of another process may have taken it first.)
                    if let Err(e) = std::fs::remove_file(&path) {
                        if e.kind() != io::ErrorKind::NotFound {
                            return Err(e);
                        }
                    }
                    return Ok(file);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free name")))
    }

    /// Count `n` more bytes against the cap; false (nothing counted) when they do not fit.
    fn reserve(&self, n: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let used = self.used();
        let mut now = used.load(Ordering::Relaxed);
        loop {
            let Some(after) = now.checked_add(n).filter(|a| *a <= limit) else {
                return false;
            };
            match used.compare_exchange_weak(now, after, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }
}

/// The effective user id (what the kernel checks permissions against).
fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions, always succeeds and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Remove the `anyedge-spill-*` files in `dir`; how many went.
fn remove_stale(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX))
            && entry.file_type().is_ok_and(|t| t.is_file());
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Why a body could not be kept in the spill store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpillError {
    #[error("the node's spill store is full (replay_spill_limit)")]
    Full,
    #[error("the spill file could not be made or written: {0}")]
    Io(#[from] io::Error),
}

/// Bytes of one request queued for its file and not yet written: past this, the client's
/// body is not read on until the writer catches up (a bound on memory per request when the
/// disk is slower than the client).
pub(crate) const MAX_QUEUED: u64 = 4 << 20;

/// One request's spill file: the bytes past the memory part of its body, in order. Appends
/// queue the chunk (no copy: `Bytes` share the client's buffer) and a blocking-pool task
/// writes the queue out, one task at a time per file, so a slow disk never stalls the worker
/// thread; reads take what is written from the file and the rest from the queue.
pub(crate) struct Spill {
    file: Arc<SpillFile>,
}

struct SpillFile {
    store: &'static SpillStore,
    file: File,
    state: std::sync::Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Bytes appended (and counted against the cap).
    len: u64,
    /// Bytes in the file; `chunks` hold `written..len`.
    written: u64,
    chunks: std::collections::VecDeque<Bytes>,
    /// A task is writing the queue out.
    writing: bool,
    /// The writer failed: nothing more is kept.
    failed: Option<io::ErrorKind>,
    /// The reader of the client's body, waiting for the queue to shrink.
    waiting: Option<std::task::Waker>,
}

impl Spill {
    /// A file for one request's body, counted in `anyedge_replay_spill_files`.
    pub fn new(store: &'static SpillStore) -> Result<Spill, SpillError> {
        let file = store.create()?;
        store
            .metrics
            .node
            .spill_files
            .fetch_add(1, Ordering::Relaxed);
        Ok(Spill {
            file: Arc::new(SpillFile {
                store,
                file,
                state: std::sync::Mutex::default(),
            }),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.file
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn len(&self) -> u64 {
        self.queue().len
    }

    /// Append `data`, if the node's cap has room for it and the file's writer has not failed.
    /// The write itself happens on the blocking pool (in place when there is no runtime).
    pub fn append(&mut self, data: &Bytes) -> Result<u64, SpillError> {
        let mut q = self.queue();
        if let Some(kind) = q.failed {
            return Err(SpillError::Io(kind.into()));
        }
        let n = data.len() as u64;
        if !self.file.store.reserve(n) {
            return Err(SpillError::Full);
        }
        q.len += n;
        q.chunks.push_back(data.clone());
        let len = q.len;
        if !q.writing {
            q.writing = true;
            drop(q);
            let file = self.file.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || file.write_out())),
                Err(_) => file.write_out(),
            }
        }
        Ok(len)
    }

    /// Whether the client's body may be read on: `Pending` (woken by the writer) while more
    /// than [`MAX_QUEUED`] bytes wait to be written.
    pub fn poll_room(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut q = self.queue();
        if q.len - q.written <= MAX_QUEUED || q.failed.is_some() {
            return std::task::Poll::Ready(());
        }
        q.waiting = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    /// Up to [`READ_CHUNK`] bytes from `at` (less at the end, or at the end of a queued
    /// chunk): from the file what is written, from the queue what is not yet.
    pub fn read(&self, at: u64) -> io::Result<Bytes> {
        let (written, len) = {
            let q = self.queue();
            if at >= q.written {
                let mut offset = q.written;
                for c in &q.chunks {
                    let end = offset + c.len() as u64;
                    if at < end {
                        return Ok(c.slice((at - offset) as usize..));
                    }
                    offset = end;
                }
                return Ok(Bytes::new());
            }
            (q.written, q.len)
        };
        // Below `written` the file's bytes never change: read them without the lock.
        let want = usize::try_from(written.min(len) - at)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK);
        let mut buf = BytesMut::zeroed(want);
        self.file.file.read_exact_at(&mut buf, at)?;
        Ok(buf.freeze())
    }

    /// Count a body the store could not keep (the cap, or an I/O error).
    pub fn refused(store: &SpillStore) {
        store
            .metrics
            .node
            .spill_refused
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl SpillFile {
    /// Write the queue out until it is empty (on the blocking pool).
    fn write_out(&self) {
        loop {
            let (at, batch) = {
                let mut q = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if q.chunks.is_empty() || q.failed.is_some() {
                    q.writing = false;
                    if let Some(w) = q.waiting.take() {
                        w.wake();
                    }
                    return;
                }
                let batch: Vec<Bytes> = q.chunks.iter().take(64).cloned().collect();
                (q.written, batch)
            };
            let mut offset = at;
            let mut result = Ok(());
            for chunk in &batch {
                result = self.file.write_all_at(chunk, offset);
                if result.is_err() {
                    break;
                }
                offset += chunk.len() as u64;
            }
            let mut q = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match result {
                Ok(()) => {
                    q.chunks.drain(..batch.len());
                    q.written = offset;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a spill file could not be written");
                    q.failed = Some(e.kind());
                }
            }
            if let Some(w) = q.waiting.take() {
                w.wake();
            }
        }
    }
}

impl Drop for SpillFile {
    /// The last holder (the request, or a write still running for it) gives the bytes back.
    fn drop(&mut self) {
        let len = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len;
        let node = &self.store.metrics.node;
        node.spill_bytes.fetch_sub(len, Ordering::Relaxed);
        node.spill_files.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, limit: u64) -> &'static SpillStore {
        Box::leak(Box::new(
            SpillStore::open(dir, limit, Metrics::new()).expect("spill dir"),
        ))
    }

    #[test]
    fn files_have_no_name_and_the_cap_holds() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("spill");
        let s = store(&dir, 100);
        let mode = std::fs::metadata(&dir).expect("dir").mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mut a = Spill::new(s).expect("file");
        a.append(&Bytes::from(vec![1; 60])).expect("fits");
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0, "unlinked");
        let mut b = Spill::new(s).expect("file");
        let too_much = Bytes::from(vec![2; 41]);
        assert!(matches!(b.append(&too_much), Err(SpillError::Full)));
        b.append(&too_much.slice(..40)).expect("fits exactly");
        assert_eq!(s.used().load(Ordering::Relaxed), 100);
        assert_eq!(&a.read(10).expect("read")[..], &[1; 50][..]);
        drop(a);
        assert_eq!(s.used().load(Ordering::Relaxed), 40);
        drop(b);
        assert_eq!(s.used().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn start_up_removes_what_a_crash_left() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stale = tmp.path().join(format!("{PREFIX}0123"));
        std::fs::write(&stale, b"old body").expect("write");
        let other = tmp.path().join("keep-me");
        std::fs::write(&other, b"not ours").expect("write");
        store(tmp.path(), 10);
        assert!(!stale.exists());
        assert!(other.exists());
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").expect("write");
        let err = SpillStore::open(&file, 10, Metrics::new())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("replay_spill_dir"), "{err}");
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    /// How long one chunk's append takes on the caller's thread, with the writes on the
    /// blocking pool (a current-thread runtime, as the node's shards).
    #[tokio::test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    async fn chunk_write_and_read_times() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store: &'static SpillStore = Box::leak(Box::new(
            SpillStore::open(tmp.path(), 1 << 30, Metrics::new()).expect("dir"),
        ));
        for chunk in [16 * 1024, 64 * 1024] {
            let data = Bytes::from(vec![7u8; chunk]);
            let mut spill = Spill::new(store).expect("file");
            let n = (256 << 20) / chunk;
            let mut worst = std::time::Duration::ZERO;
            let started = std::time::Instant::now();
            for _ in 0..n {
                let t = std::time::Instant::now();
                spill.append(&data).expect("write");
                worst = worst.max(t.elapsed());
            }
            let append = started.elapsed();
            while spill.queue().writing {
                tokio::task::yield_now().await;
            }
            let written = started.elapsed();
            let started = std::time::Instant::now();
            let mut at = 0;
            while at < spill.len() {
                at += spill.read(at).expect("read").len() as u64;
            }
            let read = started.elapsed();
            println!(
                "{} KiB chunks, 256 MiB: append {:.1} µs/chunk on the caller (worst {:.0} µs); written (page cache) by the blocking pool at {:.0} MB/s; read back at {:.0} MB/s",
                chunk / 1024,
                append.as_secs_f64() * 1e6 / n as f64,
                worst.as_secs_f64() * 1e6,
                256.0 * 1.048576 / written.as_secs_f64(),
                256.0 * 1.048576 / read.as_secs_f64(),
            );
        }
    }
}
