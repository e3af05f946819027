//! The load feed's wire format: a worker tells each edge it serves how loaded and healthy its
//! instances are, as the response body of a `GET /` stream marked with
//! [`crate::stream::FEED`]. Writing ([`write_line`], [`end_frame`]) and reading
//! ([`FeedReader`], [`parse_frame`]) are here; when to send and what to do with it are not.
//!
//! # Grammar
//!
//! ```text
//! feed  = *frame
//! frame = *(line "\n") "\n"             ; ended by an empty line
//! line  = app "/" instance " " in-flight " " hard-limit " " healthy [" " state]
//! state = "running" / "starting" / "stopping" / "stopped" / "failed"   ; version 2 only
//! ```
//!
//! One line per instance the worker runs; `in-flight` and `hard-limit` are decimal `u32`s,
//! `healthy` is `0` or `1`. A worker writes `a/i1 2 25 1\n` then `\n` for a frame of one
//! instance, and just `\n` for a frame with none.
//!
//! # Versions
//!
//! The edge names the version it reads in the feed stream's marker header
//! ([`crate::stream::FEED`]): `load` is version 1 (the lines above without `state`), `load 2`
//! is version 2. A worker writes the highest version it knows that is not above the edge's,
//! and one that predates versions ignores the value and writes version 1, which a version-2
//! reader reads too. Version 2 adds the power state of an instance that has a driver on the
//! worker (`docs/on-demand.md`), as a fifth field; an instance without one has no fifth field
//! (it always runs). In version 2, `healthy` is the instance's health alone (checks,
//! ejection), whatever its power state; in version 1 a worker writes `0` for an instance that
//! is not running, since a version-1 edge cannot know why and must not send it requests.
//!
//! # Reading, exactly as today's edges read it
//!
//! - A frame ends at the first `"\n\n"` in the stream (so a frame of no lines, `"\n"`, only
//!   ends where the next `\n` arrives; the empty lines this leaves are ignored).
//! - Lines are split at `\n`; one `\r` right before a `\n` is dropped (as `str::lines` does),
//!   but not at the end of a frame's last line.
//! - A line must have four fields, or five with a known `state`, separated by single spaces. The first splits at its
//!   first `/` into app (no `/`) and instance (may hold `/`), neither empty. In-flight is what
//!   `u32::from_str` reads (so `+5` is 5). Healthy is exactly `0` or `1`. The hard limit is
//!   read if it is a `u32`, and otherwise does not make the line unreadable
//!   ([`Entry::hard_limit`] is `None`): today's edges ignore it.
//! - A line that is not that is skipped and counted ([`Frame::skipped`]); the rest of the
//!   frame still counts. An empty line is neither.
//! - A frame longer than [`MAX_FRAME`] bytes (with its ending empty line) ends the feed
//!   ([`FrameTooLong`]); a worker with that many instances would have to split its frames.
//!
//! Reading works on bytes: a line that is not UTF-8 is skipped, whatever chunks it came in.

use crate::stream::push_u32;

/// The longest frame a reader accepts, with its ending empty line (4 MiB).
pub const MAX_FRAME: usize = 4 << 20;

/// The highest feed version this crate reads and writes.
pub const VERSION: u8 = 2;

/// The version the feed marker's value asks for: `load` is 1, `load N` is `N` (at most
/// [`VERSION`]); anything else is 1 (the workers before versions looked only for the marker).
pub fn version_asked(marker: &[u8]) -> u8 {
    match marker.strip_prefix(b"load ") {
        Some(n) => std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse::<u8>().ok())
            .map_or(1, |n| n.clamp(1, VERSION)),
        None => 1,
    }
}

/// An instance's power state, as version 2 carries it (`docs/on-demand.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Running,
    Starting,
    Stopping,
    Stopped,
    Failed,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Running,
        State::Starting,
        State::Stopping,
        State::Stopped,
        State::Failed,
    ];

    /// The wire word (the same as the state's name everywhere else).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Starting => "starting",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    /// Exactly one of the words, else `None`.
    pub fn parse(word: &[u8]) -> Option<State> {
        State::ALL
            .into_iter()
            .find(|s| s.as_str().as_bytes() == word)
    }
}

/// Append one instance's line: `<id> <in-flight> <hard-limit> <0|1>\n`, where `id` is
/// `<app>/<instance>` (`anyedge_core::InstanceId::as_str`).
pub fn write_line(out: &mut String, id: &str, inflight: u32, hard_limit: u32, healthy: bool) {
    write_line_with(out, id, inflight, hard_limit, healthy, None);
}

/// [`write_line`] with the power state of an instance with a driver (version 2; `None` for one
/// without).
pub fn write_line_with(
    out: &mut String,
    id: &str,
    inflight: u32,
    hard_limit: u32,
    healthy: bool,
    state: Option<State>,
) {
    out.push_str(id);
    out.push(' ');
    push_u32(out, inflight);
    out.push(' ');
    push_u32(out, hard_limit);
    out.push_str(if healthy { " 1" } else { " 0" });
    if let Some(state) = state {
        out.push(' ');
        out.push_str(state.as_str());
    }
    out.push('\n');
}

/// End the frame: the empty line.
pub fn end_frame(out: &mut String) {
    out.push('\n');
}

/// One instance's line, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry<'a> {
    pub app: &'a str,
    pub instance: &'a str,
    /// Requests the instance has in flight on the worker (from every edge).
    pub inflight: u32,
    /// The instance's hard limit; `None` if the field is not a `u32` (module docs).
    pub hard_limit: Option<u32>,
    pub healthy: bool,
    /// The power state of an instance with a driver on the worker (version 2); `None` for one
    /// without a driver, and on every version-1 line.
    pub state: Option<State>,
}

impl<'a> Entry<'a> {
    /// Read one line (without its `\n`); `None` if it is not one (module docs).
    pub fn parse(line: &'a [u8]) -> Option<Entry<'a>> {
        let mut fields = line.split(|&b| b == b' ');
        let (Some(id), Some(inflight), Some(hard), Some(healthy), state, None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return None;
        };
        let state = match state {
            Some(word) => Some(State::parse(word)?),
            None => None,
        };
        let (app, instance) = std::str::from_utf8(id).ok()?.split_once('/')?;
        if app.is_empty() || instance.is_empty() {
            return None;
        }
        let inflight = std::str::from_utf8(inflight).ok()?.parse().ok()?;
        let healthy = match healthy {
            b"0" => false,
            b"1" => true,
            _ => return None,
        };
        let hard_limit = std::str::from_utf8(hard).ok().and_then(|h| h.parse().ok());
        Some(Entry {
            app,
            instance,
            inflight,
            hard_limit,
            healthy,
            state,
        })
    }
}

/// One frame, read: the lines that could be read, and how many could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame<'a> {
    pub entries: Vec<Entry<'a>>,
    /// Lines skipped as unreadable (empty lines are not counted).
    pub skipped: usize,
}

/// Read one frame's text (without the empty line that ends it).
pub fn parse_frame(text: &[u8]) -> Frame<'_> {
    let mut frame = Frame::default();
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        // `str::lines`: a `\r` before a `\n` goes; the frame's last line has no `\n` here.
        let line = match (lines.peek(), line.split_last()) {
            (Some(_), Some((b'\r', rest))) => rest,
            _ => line,
        };
        if line.is_empty() {
            continue;
        }
        match Entry::parse(line) {
            Some(entry) => frame.entries.push(entry),
            None => frame.skipped += 1,
        }
    }
    frame
}

/// A frame was longer than the reader's limit: the feed is broken and should be reopened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a load-feed frame is longer than {limit} bytes")]
pub struct FrameTooLong {
    pub limit: usize,
}

/// Reads frames out of a feed's bytes as they arrive, in chunks of any size: the frames, and
/// whether the feed broke, depend only on the bytes, never on how they were cut.
///
/// After each [`push`](Self::push), call [`next_frame`](Self::next_frame) until it gives
/// `Ok(None)`: then at most one unfinished frame (shorter than the limit) and the last chunk
/// are held. Once it gives [`FrameTooLong`] it always does.
#[derive(Debug)]
pub struct FeedReader {
    buf: Vec<u8>,
    /// Where the bytes not yet given out as frames start.
    start: usize,
    /// How many bytes from `start` hold no `"\n\n"` (searched already).
    scanned: usize,
    limit: usize,
}

impl Default for FeedReader {
    fn default() -> Self {
        FeedReader::new()
    }
}

impl FeedReader {
    /// A reader that refuses frames over [`MAX_FRAME`].
    pub fn new() -> FeedReader {
        FeedReader::with_limit(MAX_FRAME)
    }

    /// A reader that refuses frames over `limit` bytes (with their ending empty line).
    pub fn with_limit(limit: usize) -> FeedReader {
        FeedReader {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            limit,
        }
    }

    /// Add bytes as they arrived.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, `Ok(None)` when the bytes so far end inside one, or
    /// [`FrameTooLong`] when the next frame is, or is sure to be, over the limit.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameTooLong> {
        let too_long = FrameTooLong { limit: self.limit };
        let rest = &self.buf[self.start..];
        // The byte before the searched part may be the first `\n` of the two.
        let from = self.scanned.saturating_sub(1);
        let Some(at) = rest[from..].windows(2).position(|w| w == b"\n\n") else {
            self.scanned = rest.len();
            // The frame will be at least one byte longer than what is here.
            return if rest.len() >= self.limit {
                Err(too_long)
            } else {
                Ok(None)
            };
        };
        let end = from + at;
        if end + 2 > self.limit {
            return Err(too_long);
        }
        let text = self.start..self.start + end;
        self.start += end + 2;
        self.scanned = 0;
        Ok(Some(parse_frame(&self.buf[text])))
    }

    /// Bytes held that are not yet part of a frame given out.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(
        app: &'a str,
        instance: &'a str,
        inflight: u32,
        hard: Option<u32>,
        healthy: bool,
    ) -> Entry<'a> {
        Entry {
            app,
            instance,
            inflight,
            hard_limit: hard,
            healthy,
            state: None,
        }
    }

    #[test]
    fn frames_are_todays_bytes() {
        let mut out = String::new();
        write_line(&mut out, "a/i1", 2, 25, true);
        end_frame(&mut out);
        assert_eq!(out, "a/i1 2 25 1\n\n");
        out.clear();
        write_line(&mut out, "shop/web-1", 0, u32::MAX, false);
        write_line(&mut out, "shop/web-2", 4_000_000_000, 0, true);
        end_frame(&mut out);
        assert_eq!(
            out,
            "shop/web-1 0 4294967295 0\nshop/web-2 4000000000 0 1\n\n"
        );
        out.clear();
        end_frame(&mut out);
        assert_eq!(out, "\n", "a worker with no instances");
    }

    #[test]
    fn a_written_frame_reads_back() {
        let mut out = String::new();
        write_line(&mut out, "a/i1", 2, 25, true);
        write_line(&mut out, "b/x/y", 0, 7, false);
        end_frame(&mut out);
        let mut r = FeedReader::new();
        r.push(out.as_bytes());
        let frame = r.next_frame().expect("fits").expect("whole");
        assert_eq!(
            frame.entries,
            [
                entry("a", "i1", 2, Some(25), true),
                entry("b", "x/y", 0, Some(7), false)
            ]
        );
        assert_eq!(frame.skipped, 0);
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn what_todays_edge_reads() {
        fn ok(line: &str) -> Option<Entry<'_>> {
            Entry::parse(line.as_bytes())
        }
        assert_eq!(
            ok("a/i1 5 10 0"),
            Some(entry("a", "i1", 5, Some(10), false))
        );
        assert_eq!(
            ok("a/i1 +5 10 1"),
            Some(entry("a", "i1", 5, Some(10), true))
        );
        // The hard limit is not looked at by today's edges.
        assert_eq!(ok("a/i1 5 x 1"), Some(entry("a", "i1", 5, None, true)));
        assert_eq!(ok("a/i1 5  1"), Some(entry("a", "i1", 5, None, true)));
        assert_eq!(ok("a/i1 5 -1 1"), Some(entry("a", "i1", 5, None, true)));
        assert_eq!(
            Entry::parse(b"a/i1 5 \xff 1"),
            Some(entry("a", "i1", 5, None, true))
        );
        assert_eq!(ok("a/b/c 1 1 1").map(|e| e.instance), Some("b/c"));
    }

    #[test]
    fn every_unreadable_line() {
        for bad in [
            "garbage",
            "a/i1 1 1",
            "a/i1 1 1 1 1",
            "a/i1 1 1 1 asleep",
            "a/i1 1 1 1 Running",
            "a/i1 1 1 1 running ",
            "a/i1 1 1 1 running x",
            "a/i1 1 1 1 ",
            " a/i1 1 1 1",
            "a/i1  1 1 1",
            "a/i1\t1 1 1",
            "a/i1 x 1 1",
            "a/i1 -1 1 1",
            "a/i1 4294967296 1 1",
            "a/i1 1 1 2",
            "a/i1 1 1 true",
            "a/i1 1 1 1\r",
            "ai1 1 1 1",
            "/i1 1 1 1",
            "a/ 1 1 1",
        ] {
            assert_eq!(Entry::parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(Entry::parse(b"\xffa/i1 1 1 1"), None);
    }

    #[test]
    fn version_two_carries_the_power_state() {
        let mut out = String::new();
        write_line_with(&mut out, "a/i1", 0, 25, true, Some(State::Stopped));
        write_line_with(&mut out, "a/i2", 3, 25, true, None);
        end_frame(&mut out);
        assert_eq!(out, "a/i1 0 25 1 stopped\na/i2 3 25 1\n\n");
        let frame = parse_frame(out.trim_end().as_bytes());
        assert_eq!(frame.entries[0].state, Some(State::Stopped));
        assert_eq!(frame.entries[1].state, None);
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str().as_bytes()), Some(s));
        }
        assert_eq!(version_asked(b"load"), 1);
        assert_eq!(version_asked(b"load 2"), 2);
        assert_eq!(
            version_asked(b"load 9"),
            2,
            "a newer edge gets what this worker has"
        );
        assert_eq!(version_asked(b"load 0"), 1);
        assert_eq!(version_asked(b"load x"), 1);
        assert_eq!(version_asked(b""), 1);
    }

    #[test]
    fn frames_skip_and_count_what_they_cannot_read() {
        let frame = parse_frame(b"garbage\na/i1 x 1 1\na/i1 5 10 0\n\nb/zz 1 1 1");
        assert_eq!(
            frame.entries,
            [
                entry("a", "i1", 5, Some(10), false),
                entry("b", "zz", 1, Some(1), true)
            ]
        );
        assert_eq!(frame.skipped, 2, "the empty line is not counted");
        // `\r` before `\n` goes, at the frame's end it stays (as `str::lines` did).
        let frame = parse_frame(b"a/i 1 1 1\r\nb/j 2 2 0\r");
        assert_eq!(frame.entries, [entry("a", "i", 1, Some(1), true)]);
        assert_eq!(frame.skipped, 1);
        assert_eq!(parse_frame(b""), Frame::default());
        assert_eq!(parse_frame(b"\r\n"), Frame::default());
    }

    use crate::fuzz::{own_entry as own, OwnedEntry as Owned};

    fn frames_of(r: &mut FeedReader) -> Result<Vec<Vec<Owned>>, FrameTooLong> {
        let mut all = Vec::new();
        while let Some(f) = r.next_frame()? {
            all.push(f.entries.iter().map(own).collect());
        }
        Ok(all)
    }

    #[test]
    fn frames_end_at_the_first_empty_line_wherever_the_chunks_end() {
        let stream = b"\n\na/i 1 2 1\n\n\nb/j 3 4 0\n\nc/k 5 6 1\n";
        let mut whole = FeedReader::new();
        whole.push(stream);
        let want = frames_of(&mut whole).expect("short");
        assert_eq!(
            want,
            [
                vec![],
                vec![own(&entry("a", "i", 1, Some(2), true))],
                vec![own(&entry("b", "j", 3, Some(4), false))],
            ]
        );
        assert_eq!(whole.pending(), "c/k 5 6 1\n".len());
        let mut bytewise = FeedReader::new();
        let mut got = Vec::new();
        for b in stream {
            bytewise.push(&[*b]);
            got.extend(frames_of(&mut bytewise).expect("short"));
        }
        assert_eq!(got, want);
        bytewise.push(b"\n");
        let last = frames_of(&mut bytewise).expect("short");
        assert_eq!(last, [vec![own(&entry("c", "k", 5, Some(6), true))]]);
    }

    #[test]
    fn a_line_cut_inside_a_character_still_reads() {
        let stream = "ü/é 1 2 1\n\n".as_bytes();
        let mut r = FeedReader::new();
        r.push(&stream[..1]);
        assert_eq!(r.next_frame(), Ok(None));
        r.push(&stream[1..4]);
        assert_eq!(r.next_frame(), Ok(None));
        r.push(&stream[4..]);
        let frame = r.next_frame().expect("fits").expect("whole");
        assert_eq!(frame.entries, [entry("ü", "é", 1, Some(2), true)]);
    }

    #[test]
    fn frames_over_the_limit_end_the_feed() {
        // Exactly the limit, with the ending empty line, is accepted.
        let mut r = FeedReader::with_limit(12);
        r.push(b"a/b 1 22 1\n\na/b 1 222 1\n\n");
        assert!(r.next_frame().expect("12 bytes").is_some());
        assert_eq!(r.next_frame(), Err(FrameTooLong { limit: 12 }));
        assert_eq!(r.next_frame(), Err(FrameTooLong { limit: 12 }), "sticky");
        // An unfinished frame as long as the limit can only be longer: refused at once.
        let mut r = FeedReader::with_limit(12);
        r.push(b"a/b 1 22 1\n");
        assert_eq!(r.next_frame(), Ok(None), "11 bytes may end in 12");
        r.push(b"x");
        assert_eq!(r.next_frame(), Err(FrameTooLong { limit: 12 }));
        r.push(b"\n\n");
        assert_eq!(r.next_frame(), Err(FrameTooLong { limit: 12 }), "sticky");
        assert_eq!(MAX_FRAME, 4 << 20);
    }
}
