//! Many keys within etcd's limits. Reading: a prefix is listed in pages (`limit` keys, the next
//! page from the last key + `\0`), every page at the revision of the first, so the listing is
//! one consistent snapshot however large the catalog; each page ranges over a window of keys
//! near it rather than to the end of the prefix, so that etcd's count of the range costs the
//! page, not the keys left ([`window`]); a page too large for the gRPC message limit is asked
//! for again at half the size. Writing: puts are split into transactions of at
//! most [`MAX_TXN_OPS`] operations and [`MAX_TXN_BYTES`] bytes (etcd's defaults refuse more
//! than 128 operations, `--max-txn-ops`, or 1.5 MiB, `--max-request-bytes`).

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, KvClient, Txn, TxnOp};
use std::ops::Range;
use window::Windows;

pub mod window;

/// Keys asked for per page. At about 1 KiB per app value a page is about 1 MiB, far below
/// [`crate::client::MAX_MESSAGE`]; a page that is not is asked for again at half the size.
pub const PAGE_KEYS: i64 = 1000;
/// Operations per transaction: etcd's default `--max-txn-ops` (compares and puts are counted
/// separately, so a put and its compare per key fit 128 keys).
pub const MAX_TXN_OPS: usize = 128;
/// Bytes of keys and values per transaction: well under etcd's default `--max-request-bytes`
/// (1.5 MiB), leaving room for the request's own framing.
pub const MAX_TXN_BYTES: usize = 1 << 20;
/// What one put and its compare cost beyond the key twice and the value (protobuf tags and
/// lengths, the compare's revision), counted generously.
const OP_OVERHEAD: usize = 64;

/// Every key under a prefix, as of one revision.
#[derive(Debug, Default)]
pub struct Listing {
    /// The revision every page was read at.
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
}

/// A listing that failed part way.
#[derive(Debug, thiserror::Error)]
#[error("listing {prefix} (at revision {revision}, {keys} keys read): {source}")]
pub struct ListError {
    pub prefix: String,
    pub revision: i64,
    pub keys: usize,
    pub source: etcd_client::Error,
}

/// Every key under `prefix` at `revision` (0: the current one), page by page.
pub async fn list(kv: &mut KvClient, prefix: &str, revision: i64) -> Result<Listing, ListError> {
    let mut listing = Listing {
        revision,
        kvs: Vec::new(),
    };
    let mut windows = Windows::new(prefix.as_bytes());
    let mut limit = PAGE_KEYS;
    loop {
        let (from, end) = windows.range();
        let options = GetOptions::new()
            .with_range(end.to_vec())
            .with_limit(limit)
            .with_revision(listing.revision);
        let mut resp = match kv.get(from.to_vec(), Some(options)).await {
            Ok(r) => r,
            Err(e) => match smaller_page(&e.to_string(), limit) {
                Some(half) => {
                    tracing::info!(limit = half, error = %e, "etcd page too large; asking for fewer keys");
                    limit = half;
                    continue;
                }
                None => return Err(listing.failed(prefix, e)),
            },
        };
        if listing.revision == 0 {
            listing.revision = resp.header().map_or(0, |h| h.revision());
        }
        let (more, count) = (resp.more(), resp.count());
        let kvs = resp.take_kvs();
        let ends = kvs.first().zip(kvs.last());
        let go_on = windows.next(ends.map(|(f, l)| (f.key(), l.key())), more, count, limit);
        listing.kvs.extend(kvs);
        if !go_on {
            break;
        }
    }
    Ok(listing)
}

impl Listing {
    fn failed(&self, prefix: &str, source: etcd_client::Error) -> ListError {
        ListError {
            prefix: prefix.to_string(),
            revision: self.revision,
            keys: self.kvs.len(),
            source,
        }
    }
}

/// The end of the range of keys starting with `prefix` (etcd's convention: the prefix with its
/// last byte below 0xff incremented and the rest dropped; `\0`, "to the end", if none is).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|b| *b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// The first key after `key`: where the next page starts.
pub fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// After an error with `message` for a page of `limit` keys: the smaller page to ask for
/// instead, when the page was too large to receive (tonic: "decoded message length too
/// large") and can shrink.
pub fn smaller_page(message: &str, limit: i64) -> Option<i64> {
    (message.contains("message length too large") && limit > 1).then_some(limit / 2)
}

/// Consecutive ranges of items, each one transaction: at most `max_ops` items and, unless a
/// single item is larger alone, at most `max_bytes` (`sizes` are each item's bytes).
pub fn batches(sizes: &[usize], max_ops: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, size) in sizes.iter().enumerate() {
        let full = i - start >= max_ops || bytes + size > max_bytes;
        if i > start && full {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// A batched put that stopped part way.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("{source}")]
    Etcd {
        written: usize,
        source: etcd_client::Error,
    },
    #[error("{first}..{last} changed in etcd since revision {since} (written by someone else meanwhile?)")]
    Changed {
        written: usize,
        first: String,
        last: String,
        since: i64,
    },
}

impl PutError {
    /// How many puts (the first ones) were written before it stopped.
    pub fn written(&self) -> usize {
        match self {
            PutError::Etcd { written, .. } | PutError::Changed { written, .. } => *written,
        }
    }
}

/// Put every `(key, value)` in transactions within etcd's limits, in order. Each key is put
/// only if it has not changed since `since` (a revision it was read at; 0: unconditionally).
/// `written` is called with each transaction's range once it is in. A failure stops at once:
/// the transactions before it stay.
pub async fn put_all(
    kv: &mut KvClient,
    puts: &[(String, Vec<u8>)],
    since: i64,
    mut written: impl FnMut(Range<usize>),
) -> Result<(), PutError> {
    let sizes: Vec<usize> = puts
        .iter()
        .map(|(k, v)| 2 * k.len() + v.len() + OP_OVERHEAD)
        .collect();
    for range in batches(&sizes, MAX_TXN_OPS, MAX_TXN_BYTES) {
        let batch = &puts[range.clone()];
        let mut txn = Txn::new();
        if since > 0 {
            let compares: Vec<Compare> = batch
                .iter()
                .map(|(k, _)| Compare::mod_revision(k.as_str(), CompareOp::Less, since + 1))
                .collect();
            txn = txn.when(compares);
        }
        let ops: Vec<TxnOp> = batch
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
            .collect();
        let resp = kv
            .txn(txn.and_then(ops))
            .await
            .map_err(|source| PutError::Etcd {
                written: range.start,
                source,
            })?;
        if !resp.succeeded() {
            return Err(PutError::Changed {
                written: range.start,
                first: batch.first().map_or_else(String::new, |(k, _)| k.clone()),
                last: batch.last().map_or_else(String::new, |(k, _)| k.clone()),
                since,
            });
        }
        written(range);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
