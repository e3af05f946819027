//! Connection buffers from a per-thread pool. A connection takes a read buffer when its socket
//! has bytes for it and gives it back as soon as it has nothing unread (between requests); a
//! response takes a write buffer for as long as it is being written, and so does a request
//! head our HTTP/1.1 client writes to an instance (`instance::http1`). An idle keep-alive
//! connection so holds no buffer at all (nginx frees its buffer on keep-alive; HAProxy
//! releases empty buffers after every receive and send).

use bytes::BytesMut;
use std::cell::RefCell;

/// The size of a pooled buffer; a head that needs more grows its buffer (up to the head limit)
/// and that buffer is freed, not pooled.
pub(crate) const SIZE: usize = 8 * 1024;
/// Buffers kept per thread and kind: enough for the connections that are busy at once.
const KEEP: usize = 256;

thread_local! {
    static READ: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static RESPONSE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// The room a response read buffer starts with (`instance::http1`).
pub(crate) const RESPONSE_SIZE: usize = 16 * 1024;
/// Response read buffers kept per thread.
const KEEP_RESPONSE: usize = 64;

/// A read buffer: the unread bytes are `data[start..end]`. Holds no memory while empty and
/// released.
#[derive(Default)]
pub(crate) struct ReadBuffer {
    data: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    /// A buffer holding `bytes` (the bytes an HTTP/2 sniff read, handed to the other server).
    pub(crate) fn unread(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[self.start..self.end],
            None => &[],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// `n` unread bytes were used.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Give the memory back to the pool when nothing is unread.
    pub(crate) fn release(&mut self) {
        if self.is_empty() {
            if let Some(d) = self.data.take() {
                if d.len() == SIZE {
                    READ.with(|p| {
                        let mut p = p.borrow_mut();
                        if p.len() < KEEP {
                            p.push(d);
                        }
                    });
                }
            }
        }
    }

    /// Room to read into, after the unread bytes: the buffer is taken from the pool if there is
    /// none, compacted when its front is used, grown up to `max` when full. Empty when `max`
    /// unread bytes are already held.
    pub(crate) fn spare(&mut self, max: usize) -> &mut [u8] {
        let data = self.data.get_or_insert_with(|| {
            READ.with(|p| p.borrow_mut().pop())
                .unwrap_or_else(|| vec![0; SIZE].into_boxed_slice())
        });
        if self.end == data.len() && self.start > 0 {
            data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == data.len() && data.len() < max {
            let mut grown = vec![0; (data.len() * 2).min(max.max(SIZE))].into_boxed_slice();
            grown[..self.end].copy_from_slice(&data[..self.end]);
            *data = grown;
        }
        &mut data[self.end..]
    }

    /// `n` bytes were read into [`Self::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        let len = self.data.as_ref().map_or(0, |d| d.len());
        self.end = (self.end + n).min(len);
    }

    /// The unread bytes, taken out (the buffer goes back to the pool).
    pub(crate) fn take_unread(&mut self) -> Vec<u8> {
        let out = self.unread().to_vec();
        self.consume(out.len());
        self.release();
        out
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        self.start = 0;
        self.end = 0;
        self.release();
    }
}

/// A write buffer from the pool, empty.
pub(crate) fn write_buffer() -> Vec<u8> {
    WRITE
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(SIZE))
}

/// Give a write buffer back (one that grew large is freed instead, one with no memory is
/// dropped).
pub(crate) fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() > 4 * SIZE || buf.capacity() == 0 {
        return;
    }
    buf.clear();
    WRITE.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < KEEP {
            p.push(buf);
        }
    });
}

/// A buffer to read an instance's response into, from the pool: empty, with room for
/// [`RESPONSE_SIZE`] bytes (more only when a frame of it is still held elsewhere).
pub(crate) fn response_buffer() -> BytesMut {
    let mut buf = RESPONSE.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    // Reclaims the buffer's own memory when nothing else holds part of it (no allocation).
    buf.reserve(RESPONSE_SIZE);
    buf
}

/// Give a response buffer back once everything in it was read (one with unread bytes, no
/// memory, or grown past four times its size is dropped instead).
pub(crate) fn give_back_response(buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 || buf.capacity() > 4 * RESPONSE_SIZE {
        return;
    }
    let _ = RESPONSE.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if p.len() < KEEP_RESPONSE {
                p.push(buf);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_grows_compacts_and_goes_back_empty() {
        let mut b = ReadBuffer::default();
        let room = b.spare(64 * 1024);
        assert_eq!(room.len(), SIZE);
        room[..5].copy_from_slice(b"hello");
        b.filled(5);
        assert_eq!(b.unread(), b"hello");
        b.consume(2);
        assert_eq!(b.unread(), b"llo");
        b.release();
        assert!(b.data.is_some(), "unread bytes keep their buffer");
        let n = b.spare(64 * 1024).len();
        assert_eq!(n, SIZE - 5, "room after the unread bytes");
        b.filled(n);
        assert_eq!(b.spare(64 * 1024).len(), 2, "compacted to the front");
        b.filled(2);
        assert_eq!(b.unread().len(), SIZE);
        assert_eq!(b.unread()[..3], *b"llo");
        assert_eq!(b.spare(64 * 1024).len(), SIZE, "grown when full");
        b.filled(SIZE);
        assert!(b.spare(2 * SIZE).is_empty(), "no room past the limit");
        b.consume(2 * SIZE);
        b.release();
        assert!(b.data.is_none(), "an empty buffer is released");
    }

    #[test]
    fn a_response_buffer_comes_back_without_a_new_allocation() {
        let mut b = response_buffer();
        assert!(b.capacity() >= RESPONSE_SIZE);
        b.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nok");
        let at = b.as_ptr();
        b.clear();
        give_back_response(b);
        let again = response_buffer();
        assert_eq!(again.as_ptr(), at, "the same memory, from the pool");
        let mut held = again;
        held.extend_from_slice(b"body");
        let frame = held.split_to(4).freeze();
        give_back_response(held);
        // The frame still holds part of that memory: the next buffer gets room of its own.
        let other = response_buffer();
        assert!(other.capacity() >= RESPONSE_SIZE);
        assert_eq!(&frame[..], b"body");
        let mut unread = BytesMut::from(&b"x"[..]);
        unread.reserve(RESPONSE_SIZE);
        give_back_response(unread);
        assert!(
            response_buffer().is_empty(),
            "a buffer with unread bytes is not pooled"
        );
    }
}
