//! Batching and paging: the pure rules, then against a real etcd with its default limits (a
//! listing far larger than one page, a page too large for the client's message limit, a put
//! of more keys and bytes than one transaction takes, a key changed behind the writer's back).

use super::*;
use crate::client;
use anyedge_test_support::etcd::Etcd;
use std::collections::BTreeSet;

#[test]
fn prefix_ends_and_next_keys_follow_etcds_convention() {
    assert_eq!(prefix_end(b"/anyedge/"), b"/anyedge0");
    assert_eq!(prefix_end(b"a\xff\xff"), b"b");
    assert_eq!(prefix_end(b"\xff"), b"\0");
    assert_eq!(prefix_end(b""), b"\0");
    assert_eq!(after(b"/anyedge/apps/a"), b"/anyedge/apps/a\0");
}

#[test]
fn batches_split_by_count_and_by_bytes() {
    assert!(batches(&[], 128, 100).is_empty());
    // By count.
    assert_eq!(
        batches(&[1; 300], 128, 1 << 20),
        [0..128, 128..256, 256..300]
    );
    assert_eq!(batches(&[1; 128], 128, 1 << 20), vec![0..128; 1]);
    // By bytes: a batch never goes over, however few items it has.
    assert_eq!(batches(&[40, 40, 40, 40, 40], 128, 100), [0..2, 2..4, 4..5]);
    assert_eq!(batches(&[50, 50, 50], 128, 100), [0..2, 2..3]);
    // An item larger than the budget goes alone (etcd will say whether it takes it).
    assert_eq!(batches(&[10, 500, 10], 128, 100), [0..1, 1..2, 2..3]);
    // Every item in exactly one batch, in order, whatever the sizes.
    let sizes: Vec<usize> = (0..1000).map(|i| (i * 7919) % 300).collect();
    let all = batches(&sizes, 128, 1000);
    let mut next = 0;
    for r in &all {
        assert_eq!(r.start, next);
        assert!(r.len() <= 128 && !r.is_empty());
        assert!(r.len() == 1 || sizes[r.clone()].iter().sum::<usize>() <= 1000);
        next = r.end;
    }
    assert_eq!(next, sizes.len());
}

#[test]
fn only_a_too_large_page_is_asked_for_again_smaller() {
    let msg = "grpc request error: status: OutOfRange, message: \"Error, decoded message length too large: found 4194400 bytes, the limit is: 4194304 bytes\"";
    assert_eq!(smaller_page(msg, 1000), Some(500));
    assert_eq!(smaller_page(msg, 3), Some(1));
    assert_eq!(smaller_page(msg, 1), None);
    assert_eq!(smaller_page("transport error", 1000), None);
}

/// A listing through [`window::Windows`] against an in-memory etcd: every key under `prefix`,
/// the number of requests, and what they cost etcd (the keys it counted: each range's whole
/// size, as etcd counts them whatever the limit).
fn list_pure(keys: &BTreeSet<Vec<u8>>, prefix: &[u8], limit: i64) -> (Vec<Vec<u8>>, usize, i64) {
    let mut windows = window::Windows::new(prefix);
    let (mut out, mut requests, mut visited) = (Vec::new(), 0, 0);
    loop {
        let (from, end) = windows.range();
        let range: Vec<&Vec<u8>> = keys
            .range(from.to_vec()..)
            .take_while(|k| end == [0] || k.as_slice() < end)
            .collect();
        let count = range.len() as i64;
        let page: Vec<Vec<u8>> = range
            .iter()
            .take(limit as usize)
            .map(|k| k.to_vec())
            .collect();
        let more = count > limit;
        requests += 1;
        visited += count;
        let ends = page.first().zip(page.last());
        let go_on = windows.next(ends.map(|(f, l)| (&f[..], &l[..])), more, count, limit);
        out.extend(page);
        if !go_on {
            return (out, requests, visited);
        }
    }
}

fn under(keys: &BTreeSet<Vec<u8>>, prefix: &[u8]) -> Vec<Vec<u8>> {
    keys.iter()
        .filter(|k| k.starts_with(prefix))
        .cloned()
        .collect()
}

#[test]
fn a_listing_reads_every_key_once_and_costs_etcd_about_its_size() {
    // The benchmark's catalog: 20,000 apps of 10 instances, a few nodes, a neighbour prefix.
    let mut keys = BTreeSet::new();
    for i in 0..20_000 {
        keys.insert(format!("/anyedge/apps/a{i}").into_bytes());
        for j in 0..10 {
            keys.insert(format!("/anyedge/instances/a{i}/i{j}").into_bytes());
        }
    }
    for n in 0..50 {
        keys.insert(format!("/anyedge/nodes/node-{n:03}").into_bytes());
    }
    keys.insert(b"/anyedge0".to_vec());
    keys.insert(b"/anyedgf/x".to_vec());
    let n = keys.len() as i64 - 2;
    let (listed, requests, visited) = list_pure(&keys, b"/anyedge/", 1000);
    assert_eq!(listed, under(&keys, b"/anyedge/"));
    // Pages from the last key to the end of the prefix would make etcd count n^2 / 2000
    // (24 million) keys. Windows: about 8 times n (each window of the names' last digit, `a19`
    // then `a1:`, is followed by windows wider by a byte until one is too wide).
    assert!(visited < 10 * n, "{visited} keys counted for {n}");
    assert!(
        requests < 3 * n as usize / 1000,
        "{requests} requests for {n} keys"
    );
    // Small pages too.
    let (listed, _, visited) = list_pure(&keys, b"/anyedge/", 10);
    assert_eq!(listed.len() as i64, n);
    assert!(
        visited < 30 * n,
        "{visited} keys counted for {n} in pages of 10"
    );
}

#[test]
fn windows_tile_any_key_space() {
    // Binary keys, 0xff bytes included, a prefix of 0xff (whose range runs to the end of the
    // key space) and the empty prefix; every key in exactly one page, in order.
    let mut seed = 7u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = [0u8, 1, b'/', b'a', b'b', 0xfe, 0xff];
    for round in 0..40 {
        let mut keys = BTreeSet::new();
        for _ in 0..(rand() % 3000) {
            let len = 1 + rand() as usize % 6;
            let key: Vec<u8> = (0..len)
                .map(|_| alphabet[rand() as usize % alphabet.len()])
                .collect();
            keys.insert(key);
        }
        for prefix in [&b""[..], b"a", b"/", b"\xff", b"a\xff", b"\xff\xff"] {
            let limit = [1, 3, 50, 1000][round % 4];
            let (listed, _, _) = list_pure(&keys, prefix, limit);
            assert_eq!(
                listed,
                under(&keys, prefix),
                "prefix {prefix:?} limit {limit}"
            );
        }
    }
}

fn puts(n: usize, value_len: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("/t/k{i:05}"), vec![b'x'; value_len]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_puts_go_in_several_transactions_and_list_back_in_pages_at_one_revision() {
    let etcd = Etcd::start();
    let c = client::connect(&client::plain(&etcd.url()))
        .await
        .expect("connect");
    let mut kv = client::kv(&c);
    // 2,500 keys of 2 KiB: 5 MiB, over the 4 MiB default message size, 20 txns by count and
    // more by bytes.
    let all = puts(2500, 2048);
    let mut ranges = Vec::new();
    put_all(&mut kv, &all, 0, |r| ranges.push(r))
        .await
        .expect("put all");
    assert!(ranges.len() > 2500 / MAX_TXN_OPS, "{}", ranges.len());
    assert_eq!(ranges.last().map(|r| r.end), Some(2500));

    let first = list(&mut kv, "/t/", 0).await.expect("list");
    assert_eq!(first.kvs.len(), 2500);
    assert!(first.kvs.windows(2).all(|w| w[0].key() < w[1].key()));
    // Later writes do not show in a listing at the earlier revision.
    kv.put("/t/later", "x", None).await.expect("put");
    kv.delete("/t/k00000", None).await.expect("delete");
    let again = list(&mut kv, "/t/", first.revision).await.expect("list");
    assert_eq!(again.revision, first.revision);
    assert_eq!(again.kvs.len(), 2500);
    assert_eq!(list(&mut kv, "/t/", 0).await.expect("list").kvs.len(), 2500);

    // A client accepting only 64 KiB per message still lists everything, in smaller pages.
    let mut small = c.kv_client().max_decoding_message_size(64 << 10);
    let listing = list(&mut small, "/t/", first.revision).await.expect("list");
    assert_eq!(listing.kvs.len(), 2500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_since_it_was_read_stops_the_put_and_says_how_far_it_got() {
    let etcd = Etcd::start();
    let c = client::connect(&client::plain(&etcd.url()))
        .await
        .expect("connect");
    let mut kv = client::kv(&c);
    let read_at = kv
        .put("/t/z", "before", None)
        .await
        .expect("put")
        .header()
        .map_or(0, |h| h.revision());
    let mut all = puts(200, 10);
    all.push(("/t/z".into(), b"after".to_vec()));
    // Someone else writes a key of the second transaction after it was read.
    kv.put("/t/z", "theirs", None).await.expect("put");
    let err = put_all(&mut kv, &all, read_at, |_| {})
        .await
        .expect_err("changed");
    assert!(matches!(err, PutError::Changed { .. }), "{err}");
    assert_eq!(err.written(), 128);
    assert!(err.to_string().contains("/t/z"), "{err}");
    let left = list(&mut kv, "/t/", 0).await.expect("list");
    assert_eq!(left.kvs.len(), 129);
    let z = left.kvs.iter().find(|kv| kv.key() == b"/t/z").expect("z");
    assert_eq!(z.value(), b"theirs");
}
