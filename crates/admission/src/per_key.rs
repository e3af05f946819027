//! Budgets per key (client IP): entries exist only while a slot is held, so memory is bounded
//! by open connections, not by how many clients were ever seen.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

const SHARDS: usize = 16;

/// Sharded map of counts per key.
pub struct PerKeyBudget<K> {
    shards: Arc<[Mutex<HashMap<K, u32>>; SHARDS]>,
    hasher: RandomState,
}

impl<K> Clone for PerKeyBudget<K> {
    fn clone(&self) -> Self {
        PerKeyBudget {
            shards: self.shards.clone(),
            hasher: self.hasher.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> Default for PerKeyBudget<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> PerKeyBudget<K> {
    pub fn new() -> Self {
        PerKeyBudget {
            shards: Arc::new(std::array::from_fn(|_| Mutex::new(HashMap::new()))),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Take a slot for `key` if it holds fewer than `limit`.
    pub fn try_acquire(&self, key: K, limit: u32) -> Option<KeyGuard<K>> {
        let shard = self.shard(&key);
        let mut map = self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(key.clone()).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                map.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(KeyGuard {
            shards: self.shards.clone(),
            shard,
            key,
        })
    }

    pub fn count(&self, key: &K) -> u32 {
        let map = self.shards[self.shard(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(key).copied().unwrap_or(0)
    }

    /// How many keys hold a slot.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// A slot held for one key.
pub struct KeyGuard<K: Hash + Eq> {
    shards: Arc<[Mutex<HashMap<K, u32>>; SHARDS]>,
    shard: usize,
    key: K,
}

impl<K: Hash + Eq> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        let mut map = self.shards[self.shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn per_key_limit() {
        let b = PerKeyBudget::new();
        let a1 = b.try_acquire("a", 1);
        assert!(a1.is_some());
        assert!(b.try_acquire("a", 1).is_none());
        assert!(b.try_acquire("b", 1).is_some());
        drop(a1);
        assert!(b.try_acquire("a", 1).is_some());
        assert_eq!(b.keys(), 0, "entries vanish with their last guard");
    }

    proptest! {
        #[test]
        fn counts_return_to_zero(ops in proptest::collection::vec((0u8..4, any::<bool>()), 0..200)) {
            let b = PerKeyBudget::new();
            let mut held = Vec::new();
            for (key, take) in ops {
                if take {
                    if let Some(g) = b.try_acquire(key, 3) { held.push(g); }
                } else if !held.is_empty() {
                    held.swap_remove(0);
                }
                for k in 0u8..4 { prop_assert!(b.count(&k) <= 3); }
            }
            drop(held);
            prop_assert_eq!(b.keys(), 0);
        }
    }
}
