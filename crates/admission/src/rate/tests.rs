//! GCRA steps, the per-client table, and its bound under a flood of distinct addresses.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const MS: u64 = 1_000_000;
/// A clock that starts above zero, as callers' do.
const T0: u64 = 10 * SECOND;

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

#[test]
fn a_bucket_allows_its_burst_then_its_rate() {
    let g = Gcra::default();
    let rate = Rate::new(10, 5);
    for _ in 0..5 {
        assert!(g.check(rate, T0).is_ok());
    }
    let limited = g.check(rate, T0).expect_err("burst used up");
    assert_eq!(limited.wait_ns, 100 * MS);
    assert_eq!(limited.retry_after_secs(), 1);
    // One event per 100 ms from then on.
    assert!(g.check(rate, T0 + 100 * MS).is_ok());
    assert!(g.check(rate, T0 + 100 * MS).is_err());
    assert!(g.check(rate, T0 + 200 * MS).is_ok());
    // Idle for a while: the bucket is full again, no more.
    let later = T0 + 10 * SECOND;
    for _ in 0..5 {
        assert!(g.check(rate, later).is_ok());
    }
    assert!(g.check(rate, later).is_err());
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    let g = Gcra::default();
    let rate = Rate::new(1, 1);
    assert!(g.check(rate, T0).is_ok());
    assert_eq!(
        g.check(rate, T0 + 1).map_err(|l| l.retry_after_secs()),
        Err(1)
    );
    let slow = Rate::new(1, 3);
    let g = Gcra::default();
    for _ in 0..3 {
        assert!(g.check(slow, T0).is_ok());
    }
    assert_eq!(g.check(slow, T0).map_err(|l| l.wait_ns), Err(SECOND));
}

#[test]
fn clients_have_their_own_buckets() {
    let t = ClientRates::new();
    let rate = Rate::new(2, 2);
    let (a, b) = (v4(0x7f00_0002), v4(0x7f00_0003));
    assert!(t.check(a, rate, T0).is_ok());
    assert!(t.check(a, rate, T0).is_ok());
    assert!(t.check(a, rate, T0).is_err());
    assert!(
        t.check(b, rate, T0).is_ok(),
        "another client is not limited"
    );
    // An IPv4-mapped address is the same client; an IPv6 /64 is one client.
    let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap_or(a);
    assert!(t.check(mapped, rate, T0).is_err());
    let (x, y): (IpAddr, IpAddr) = (
        "2001:db8:1:2::1".parse().unwrap_or(a),
        "2001:db8:1:2:ffff::9".parse().unwrap_or(a),
    );
    assert!(t.check(x, rate, T0).is_ok());
    assert!(t.check(y, rate, T0).is_ok());
    assert!(t.check(x, rate, T0).is_err(), "the same /64");
    assert!(t.check(IpAddr::V6(Ipv6Addr::LOCALHOST), rate, T0).is_ok());
}

/// The bound: a flood from 1,000,000 distinct addresses keeps at most `CAPACITY`
/// entries in a table whose memory was fixed at creation; a client that keeps sending is
/// still limited (its timestamp is the newest of its set, so the flood's entries go first).
#[test]
fn a_million_addresses_stay_within_the_bound() {
    let t = ClientRates::new();
    let rate = Rate::new(10, 10);
    let heavy = v4(0x0a00_0001);
    let mut heavy_allowed = 0;
    let mut now = T0;
    for n in 0..1_000_000u32 {
        // 1,000,000 addresses over 10 s, each once; the heavy client once a millisecond
        // (100 times its rate).
        now += 10_000;
        let _ = t.check(v4(0x4000_0000 + n), rate, now);
        if n % 100 == 0 {
            heavy_allowed += u32::from(t.check(heavy, rate, now).is_ok());
        }
    }
    assert!(t.tracked() <= ClientRates::CAPACITY);
    assert_eq!(ClientRates::CAPACITY, 16_384);
    // The table's memory, as allocated: no more after a million addresses than before.
    assert!(
        t.bytes() <= 420 * 1024,
        "{} bytes per rate-limited app",
        t.bytes()
    );
    // 10 s at 10/s plus a burst of 10: the heavy client was held to its rate throughout.
    assert!(heavy_allowed <= 111, "heavy client got {heavy_allowed}");
    assert!(heavy_allowed >= 100, "heavy client got {heavy_allowed}");
    // The heavy client's entry (the newest timestamp of its set) was never the one taken.
    assert!(t.check(heavy, rate, now).is_err());
}

/// More limited clients than a set holds: the table stays bounded, and forgetting is counted.
#[test]
fn forgetting_limited_clients_is_counted() {
    let t = ClientRates::new();
    let rate = Rate::new(1, 1);
    for n in 0..(ClientRates::CAPACITY as u32 * 4) {
        let _ = t.check(v4(n), rate, T0);
    }
    assert_eq!(t.tracked(), ClientRates::CAPACITY);
    assert!(t.forgotten() >= ClientRates::CAPACITY as u64 * 2);
}
