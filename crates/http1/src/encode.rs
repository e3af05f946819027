//! The canonical chunked encoder: a proxy never forwards framing as received, it re-emits
//! chunks as `{size:x}\r\n{data}\r\n` and ends with `0\r\n{trailers}\r\n`.

use crate::fields::classify;
use crate::head::Class;

/// The line before a chunk's data (`{size:x}\r\n`), built without allocating, so a writer can
/// send it, the data, and [`CHUNK_END`] as three slices of one vectored write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHead {
    bytes: [u8; 18],
    len: u8,
}

/// What follows a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

impl ChunkHead {
    /// The head of a chunk of `size` bytes (`size` 0 is the last chunk's `0\r\n`).
    pub fn new(size: u64) -> ChunkHead {
        let mut bytes = [0u8; 18];
        let digits = (16 - size.leading_zeros() as usize / 4).max(1);
        for (i, byte) in bytes.iter_mut().take(digits).enumerate() {
            let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
            *byte = b"0123456789abcdef"[nibble as usize];
        }
        bytes[digits] = b'\r';
        bytes[digits + 1] = b'\n';
        ChunkHead {
            bytes,
            len: (digits + 2) as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Appends `data` as one chunk; nothing for empty data (an empty chunk would end the body).
pub fn write_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(ChunkHead::new(data.len() as u64).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
}

/// Appends the last chunk and the trailer section. Trailer fields that frame, route or concern
/// one connection (every field with a [`Class`] other than `Other`) are not written: RFC 9110
/// 6.5.1 forbids them in trailers.
pub fn write_last_chunk<'a>(
    trailers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        if classify(name) == Class::Other {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}
