//! Which range each page of a listing asks for. etcd answers every ranged read with the number
//! of keys in the whole range (`count`), and to count them it visits each one in its index
//! (3.4 collects them all; 3.5 still counts them), whatever the `limit`. Pages that each range
//! from the last key read to the end of the prefix therefore cost the keys left, and a listing
//! the square of its size over the page: 1.1 million keys took etcd about six minutes.
//!
//! So a page ranges over a *window*: the keys sharing the last key's first `depth` bytes (up to
//! `prefix_end` of them). Windows tile the prefix's range in order, so every key is read once.
//! The `count` etcd returns says how large the window is: a window of more than [`WIDE`] pages
//! is narrowed at the next page (to one byte past where the page's first and last keys part,
//! at least one byte deeper), and once a window of less than one page is
//! read through the next one is one byte wider. Each page then costs about the page, not the
//! keys left after it.

use super::{after, prefix_end};

/// A window holding more than this many pages is narrowed.
pub const WIDE: i64 = 4;

/// The ranges of a listing's pages.
#[derive(Debug)]
pub struct Windows {
    /// Where the next page starts.
    from: Vec<u8>,
    /// Where the window ends (exclusive); `[0]` is "to the end of the key space".
    end: Vec<u8>,
    /// Where the prefix's range ends.
    last: Vec<u8>,
    /// Bytes of a key that the next window shares.
    depth: usize,
    /// The prefix's length: windows are never wider than the prefix.
    shallowest: usize,
    /// Keys in the window when its first page was read.
    size: Option<i64>,
}

/// `a < b` where `[0]` is past every key.
fn below(a: &[u8], b: &[u8]) -> bool {
    a != [0] && (b == [0] || a < b)
}

impl Windows {
    /// The first window: the whole prefix.
    pub fn new(prefix: &[u8]) -> Windows {
        let end = prefix_end(prefix);
        Windows {
            from: prefix.to_vec(),
            end: end.clone(),
            last: end,
            depth: prefix.len(),
            shallowest: prefix.len(),
            size: None,
        }
    }

    /// The range of the next page: from (inclusive), to (exclusive; `[0]`: to the end).
    pub fn range(&self) -> (&[u8], &[u8]) {
        (&self.from, &self.end)
    }

    /// After a page of at most `limit` keys from `first` to `last` (`None`: empty), with `more`
    /// keys left in its range and `count` keys in that range: whether there is another page to
    /// read.
    pub fn next(
        &mut self,
        page: Option<(&[u8], &[u8])>,
        more: bool,
        count: i64,
        limit: i64,
    ) -> bool {
        let size = *self.size.get_or_insert(count);
        if more {
            let Some((first, last)) = page else {
                return false;
            };
            self.from = after(last);
            if count > WIDE * limit && self.depth < last.len() {
                // One byte past where the page's keys part: the next keys near the last one
                // are about as many as the page held.
                let parted = first.iter().zip(last).take_while(|(a, b)| a == b).count();
                self.depth = (self.depth + 1).max(parted + 1).min(last.len());
                let narrower = prefix_end(&last[..self.depth]);
                if below(&narrower, &self.end) {
                    self.end = narrower;
                    // What is left of a window narrowed says nothing of how wide the next
                    // should be: it is not taken as small.
                    self.size = Some(limit);
                }
            }
            return true;
        }
        if !below(&self.end, &self.last) {
            return false;
        }
        self.from = std::mem::take(&mut self.end);
        if size < limit {
            self.depth = self.depth.saturating_sub(1).max(self.shallowest);
        }
        let depth = self.depth.min(self.from.len());
        let end = prefix_end(&self.from[..depth]);
        self.end = if below(&end, &self.last) {
            end
        } else {
            self.last.clone()
        };
        self.size = None;
        true
    }
}
