//! The checks behind the fuzz targets in `fuzz/` (one function per target, each panics when a
//! property fails), kept here so that `tests/fuzz_corpus.rs` runs every seed and crash input
//! through the same code on stable Rust. Not an API: the asserts are the point.

use crate::feed::{self, FeedReader, Frame};
use crate::header::{TcpHeader, TcpReply, MAX_HEADER_LEN};
use crate::retry::{Fault, RetryElsewhere};
use crate::stream::{self, Client, Target};
use std::net::IpAddr;

/// The raw-TCP header decoder never panics, never claims more bytes than it was given, and
/// what it decodes encodes back to the same bytes and decodes equal. Replies likewise.
pub fn tcp_header(data: &[u8]) {
    if let [a, b, ..] = *data {
        if let Ok(reply) = TcpReply::decode([a, b]) {
            assert_eq!(reply.encode(), [a, b]);
        }
    }
    let Ok((header, used)) = TcpHeader::decode(data) else {
        return;
    };
    assert!(used <= data.len() && used <= MAX_HEADER_LEN);
    let encoded = match header.encode() {
        Ok(encoded) => encoded,
        Err(e) => panic!("a decoded header does not encode: {e}"),
    };
    assert_eq!(encoded, &data[..used]);
    assert_eq!(TcpHeader::decode(&encoded), Ok((header, used)));
}

/// The stream header: parsing never panics; what parses writes back to text that parses
/// equal; a client made of arbitrary bytes round-trips, written as `IpAddr` writes it.
pub fn stream_header(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(c) = Client::parse(text) {
            client_round_trips(c);
        }
        if let Some((app, instance, client)) = stream::parse_stream(text) {
            // What `HeaderValue::to_str` lets through, names included, a Target can carry.
            let header_text = data
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
            match Target::new(app, instance) {
                Ok(target) => {
                    let again = target.header(client);
                    assert_eq!(stream::parse_stream(&again), Some((app, instance, client)));
                }
                Err(e) => assert!(!header_text, "{e}: {text:?}"),
            }
        }
    }
    if let Some(c) = client_from(data) {
        client_round_trips(c);
    }
    // The start request's header: what parses writes back to text that parses equal.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((app, instance)) = stream::parse_start(text) {
            let again = stream::start_header(app, instance);
            assert_eq!(
                stream::parse_start(&again),
                Some((app, instance)),
                "{text:?}"
            );
        }
    }
}

fn client_round_trips(c: Client) {
    let mut text = String::new();
    c.write(&mut text);
    assert!(text.len() <= Client::MAX_LEN, "{text:?}");
    assert_eq!(Client::parse(&text), Some(c), "{text:?}");
    let mut ip = String::new();
    stream::write_ip(&mut ip, c.ip);
    assert_eq!(ip, c.ip.to_string());
}

/// A client from raw bytes: a flags byte (IPv6, TLS, HTTP/2), the address, the port.
fn client_from(data: &[u8]) -> Option<Client> {
    let (&flags, rest) = data.split_first()?;
    let (ip, rest) = if flags & 1 == 0 {
        let (ip, rest) = rest.split_first_chunk::<4>()?;
        (IpAddr::from(*ip), rest)
    } else {
        let (ip, rest) = rest.split_first_chunk::<16>()?;
        (IpAddr::from(*ip), rest)
    };
    let (port, _) = rest.split_first_chunk::<2>()?;
    Some(Client {
        ip,
        port: u16::from_be_bytes(*port),
        tls: flags & 2 != 0,
        http2: flags & 4 != 0,
    })
}

/// Retry-elsewhere reasons: any text reads as some reason (exactly its text, or `other`),
/// which reads back the same; backoff follows fault; TCP codes map back.
pub fn retry_reason(data: &[u8]) {
    let reason = RetryElsewhere::parse_bytes(data);
    assert_eq!(RetryElsewhere::parse(reason.as_str()), reason);
    if reason != RetryElsewhere::Other {
        assert_eq!(reason.as_str().as_bytes(), data);
    }
    assert_eq!(
        reason.backs_off(),
        !matches!(reason.fault(), Fault::Load | Fault::Power)
    );
    if let Some(tcp) = reason.tcp() {
        assert_eq!(RetryElsewhere::from(tcp), reason);
        let reply = TcpReply::Refused(tcp);
        assert_eq!(TcpReply::decode(reply.encode()), Ok(reply));
    }
    if let [kind, code, ..] = *data {
        match TcpReply::decode([kind, code]) {
            Ok(TcpReply::Refused(r)) => assert_eq!(RetryElsewhere::from(r).tcp(), Some(r)),
            Ok(TcpReply::Connected) => assert_eq!([kind, code], [0, 0]),
            Err(_) => {}
        }
    }
}

/// A feed entry as owned values (comparable after its frame's bytes are gone).
pub(crate) type OwnedEntry = (String, String, u32, Option<u32>, bool, Option<feed::State>);
type OwnedFrame = (Vec<OwnedEntry>, usize);

/// How a feed's bytes read: its frames, whether it broke, the bytes left over.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    frames: Vec<OwnedFrame>,
    broke: bool,
    pending: usize,
}

pub(crate) fn own_entry(e: &feed::Entry<'_>) -> OwnedEntry {
    (
        e.app.into(),
        e.instance.into(),
        e.inflight,
        e.hard_limit,
        e.healthy,
        e.state,
    )
}

fn own(frame: &Frame<'_>) -> OwnedFrame {
    (frame.entries.iter().map(own_entry).collect(), frame.skipped)
}

/// Feed `stream` to a reader in chunks of the sizes `next_len` gives.
fn read(stream: &[u8], limit: usize, mut next_len: impl FnMut() -> usize) -> Read {
    let mut reader = FeedReader::with_limit(limit);
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => frames.push(own(&frame)),
                Ok(None) => break,
                Err(_) => {
                    let pending = reader.pending();
                    return Read {
                        frames,
                        broke: true,
                        pending,
                    };
                }
            }
        }
        assert!(reader.pending() < limit, "the reader holds a whole frame");
        if rest.is_empty() {
            let pending = reader.pending();
            return Read {
                frames,
                broke: false,
                pending,
            };
        }
        let (chunk, tail) = rest.split_at(next_len().clamp(1, rest.len()));
        reader.push(chunk);
        rest = tail;
    }
}

/// The load feed: the reader gives the same frames whatever the chunking (all at once, byte by
/// byte, pseudo-random sizes), and every line it read writes back to a line that reads equal.
/// The first byte picks the limit (odd: 1 to 128 bytes) and the chunk sizes.
pub fn load_feed(data: &[u8]) {
    // The feed marker's value (the edge's version) is read by the worker from the peer too.
    let asked = feed::version_asked(data);
    assert!((1..=feed::VERSION).contains(&asked));
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let limit = if control & 1 == 0 {
        feed::MAX_FRAME
    } else {
        usize::from(control >> 1) + 1
    };
    let whole = read(stream, limit, || usize::MAX);
    let mut bytewise = read(stream, limit, || 1);
    let mut seed = u32::from(control) | 1;
    let mut chunked = read(stream, limit, || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (seed >> 16) as usize % 17 + 1
    });
    if whole.broke {
        // How much is held when it breaks depends on where the chunks ended.
        (bytewise.pending, chunked.pending) = (whole.pending, whole.pending);
    }
    assert_eq!(bytewise, whole, "byte by byte");
    assert_eq!(chunked, whole, "in chunks");
    // A frame of no lines is just "\n", which ends nothing on its own.
    for (entries, _) in whole.frames.iter().filter(|(e, _)| !e.is_empty()) {
        rewritten_reads_equal(entries);
    }
}

fn rewritten_reads_equal(entries: &[OwnedEntry]) {
    let mut text = String::new();
    for (app, instance, inflight, hard, healthy, state) in entries {
        let id = format!("{app}/{instance}");
        let hard = hard.unwrap_or(0);
        feed::write_line_with(&mut text, &id, *inflight, hard, *healthy, *state);
    }
    feed::end_frame(&mut text);
    let mut reader = FeedReader::new();
    reader.push(text.as_bytes());
    let frame = match reader.next_frame() {
        Ok(Some(frame)) => own(&frame),
        other => panic!("a rewritten frame does not read: {other:?} {text:?}"),
    };
    let want: Vec<OwnedEntry> = entries
        .iter()
        .map(|(a, i, n, h, ok, st)| (a.clone(), i.clone(), *n, Some(h.unwrap_or(0)), *ok, *st))
        .collect();
    assert_eq!(frame, (want, 0), "{text:?}");
    assert_eq!(reader.pending(), 0);
}
