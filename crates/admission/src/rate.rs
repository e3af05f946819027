//! Rate limits as GCRA (the generic cell rate algorithm: a token bucket kept as one
//! timestamp), for one counter ([`Gcra`]) and for every client of an app ([`ClientRates`]).
//! Sans-io: the caller passes the time, in nanoseconds on a clock of its choice that starts
//! above zero.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

const SECOND: u64 = 1_000_000_000;

/// A rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds one event costs.
    interval: u64,
    /// How far ahead of now the bucket's timestamp may be: `burst - 1` events.
    tolerance: u64,
}

impl Rate {
    /// `per_second` must be above 0; `burst` below 1 counts as 1.
    pub fn new(per_second: u32, burst: u32) -> Rate {
        let interval = SECOND / u64::from(per_second.max(1));
        Rate {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// GCRA on the timestamp `tat` (0: never used, a full bucket): the new timestamp, or how
    /// long until the event would fit.
    fn step(self, tat: u64, now: u64) -> Result<u64, u64> {
        let tat = tat.max(now);
        if tat - now > self.tolerance {
            return Err(tat - now - self.tolerance);
        }
        Ok(tat + self.interval)
    }
}

/// Over the limit: how long until one more event fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub wait_ns: u64,
}

impl Limited {
    /// Whole seconds for `Retry-After`: at least 1.
    pub fn retry_after_secs(self) -> u64 {
        self.wait_ns.div_ceil(SECOND).max(1)
    }
}

/// One rate-limited counter (an app's total on this node): lock-free.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// Take one event at `now`, or say how long until one fits.
    pub fn check(&self, rate: Rate, now: u64) -> Result<(), Limited> {
        let mut cur = self.tat.load(Ordering::Relaxed);
        loop {
            let next = rate.step(cur, now).map_err(|wait_ns| Limited { wait_ns })?;
            match self
                .tat
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// Ways of each set: a client's entry is in one set, found by a scan of this many.
const WAYS: usize = 8;
/// Sets of a table: [`ClientRates::CAPACITY`] clients in all.
const SETS: usize = 2048;

/// 24 bytes: the key as two words keeps the entry 8-byte aligned (a `u128` would pad it to 32).
#[derive(Clone, Copy, Default)]
struct Entry {
    key: [u64; 2],
    /// 0: free.
    tat: u64,
}

/// The rate state of every client of one app, in a table of fixed size: at most
/// [`ClientRates::CAPACITY`] clients are tracked ([`ClientRates::BYTES`] of memory, taken
/// at its creation), however many addresses send. A client's entry lives in one set of
/// [`WAYS`] (by a hash with a per-table random seed, so a sender cannot aim at a set); a new
/// client takes the set's entry with the oldest timestamp: a full bucket (nothing lost), else
/// the fullest one. A client forgotten before its bucket was full again starts afresh (with
/// a full bucket), and that is counted ([`ClientRates::forgotten`]); the clients sending
/// hardest hold the newest timestamps and are forgotten last. Under a flood from more
/// distinct addresses than the table holds, the limit per client may leak for some and the
/// app's `total` is what holds.
pub struct ClientRates {
    sets: Box<[Mutex<[Entry; WAYS]>]>,
    hasher: RandomState,
    forgotten: AtomicU64,
}

impl Default for ClientRates {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientRates {
    /// Clients tracked at most.
    pub const CAPACITY: usize = SETS * WAYS;
    /// The table's memory (entries and their locks), allocated once.
    pub const BYTES: usize = SETS * std::mem::size_of::<Mutex<[Entry; WAYS]>>();

    pub fn new() -> ClientRates {
        ClientRates {
            sets: (0..SETS)
                .map(|_| Mutex::new([Entry::default(); WAYS]))
                .collect(),
            hasher: RandomState::new(),
            forgotten: AtomicU64::new(0),
        }
    }

    /// The key of a client address: an IPv4 address (IPv4-mapped IPv6 counts as IPv4), or the
    /// /64 of an IPv6 address (one host or site holds a whole /64, so the limit is per /64).
    pub fn key(ip: IpAddr) -> [u64; 2] {
        match ip.to_canonical() {
            IpAddr::V4(a) => [0, u64::from(u32::from(a)) | (0xffff << 32)],
            IpAddr::V6(a) => [(u128::from(a) >> 64) as u64, 0],
        }
    }

    /// Take one event for `ip` at `now`, or say how long until one fits.
    pub fn check(&self, ip: IpAddr, rate: Rate, now: u64) -> Result<(), Limited> {
        let key = Self::key(ip);
        let set = (self.hasher.hash_one(key) as usize) % SETS;
        let mut entries = self.sets[set]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = match entries.iter().position(|e| e.tat != 0 && e.key == key) {
            Some(i) => i,
            None => {
                // The oldest timestamp: a free entry (0), else the fullest bucket.
                let (i, victim) = entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.tat)
                    .map_or((0, Entry::default()), |(i, e)| (i, *e));
                if victim.tat > now {
                    self.forgotten.fetch_add(1, Ordering::Relaxed);
                }
                entries[i] = Entry { key, tat: 0 };
                i
            }
        };
        let next = rate
            .step(entries[at].tat, now)
            .map_err(|wait_ns| Limited { wait_ns })?;
        entries[at].tat = next;
        Ok(())
    }

    /// Clients forgotten before their bucket was full again.
    pub fn forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Relaxed)
    }

    /// The table's memory (its sets and their locks): fixed at creation, [`Self::BYTES`].
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.sets)
    }

    /// Clients tracked now (entries in use): at most [`Self::CAPACITY`].
    pub fn tracked(&self) -> usize {
        self.sets
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.iter().filter(|e| e.tat != 0).count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests;
