//! A map by name whose copy costs its shards, not its entries: [`SHARDS`] maps behind `Arc`,
//! a key's shard chosen by a fixed hash of it. Copying the map copies the shards' pointers; a
//! change to the copy copies the one shard it touches (`Arc::make_mut`). So a snapshot built on
//! the previous one by a change to one app copies 256 pointers and one shard of about
//! `apps / 256` entries, where a flat map copied (and later freed) a pointer per app, each a
//! cache miss on its reference count: at 100,000 apps that was a third of an etcd change's CPU.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// The shards' own hasher: foldhash, seeded per map (the keys come from the config, never from
/// a client, so a fast hash serves; the routes look names up per request on a worker).
type Map<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Shards per map. 256 empty shards cost one `Arc` allocation each (about 20 KiB a map).
pub const SHARDS: usize = 256;

/// Which shard a key is in: a hash with fixed keys (the same in every map and process run; the
/// keys come from the config, never from a client), independent of the shards' own hashers.
fn shard_of(key: &str) -> usize {
    let h = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key);
    (h >> 56) as usize % SHARDS
}

/// A map from names to `V`, sharded and copied on write.
pub struct Shards<V> {
    shards: Vec<Arc<Map<V>>>,
    len: usize,
}

impl<V> Default for Shards<V> {
    fn default() -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| Arc::new(Map::default())).collect(),
            len: 0,
        }
    }
}

impl<V> Clone for Shards<V> {
    /// The shards' pointers: no entry is touched.
    fn clone(&self) -> Self {
        Shards {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<V> Shards<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<V: Clone> Shards<V> {
    /// Insert (copying the key's shard first if another map shares it).
    pub fn insert(&mut self, key: Arc<str>, value: V) -> Option<V> {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&key)]);
        let old = shard.insert(key, value);
        self.len += usize::from(old.is_none());
        old
    }

    /// Remove (copying the key's shard first if another map shares it and has the key).
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let at = shard_of(key);
        if !self.shards[at].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[at]).remove(key);
        self.len -= usize::from(old.is_some());
        old
    }
}

impl<V> std::ops::Index<&str> for Shards<V> {
    type Output = V;

    /// Panics when the key is absent, as `HashMap`'s does.
    fn index(&self, key: &str) -> &V {
        #[allow(clippy::expect_used)]
        self.get(key).expect("no entry for the key")
    }
}

impl<'a, V> IntoIterator for &'a Shards<V> {
    type Item = (&'a Arc<str>, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a Arc<str>, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for Shards<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_every_shard_until_one_is_changed() {
        let mut a: Shards<u32> = Shards::default();
        for i in 0..2000 {
            a.insert(format!("app-{i}").into(), i);
        }
        assert_eq!(a.len(), 2000);
        assert!(
            a.shards.iter().all(|s| !s.is_empty()),
            "spread over every shard"
        );
        let mut b = a.clone();
        let shared = |a: &Shards<u32>, b: &Shards<u32>| {
            a.shards
                .iter()
                .zip(&b.shards)
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count()
        };
        assert_eq!(shared(&a, &b), SHARDS);
        b.insert("app-7".into(), 70);
        assert_eq!(b.remove("app-8"), Some(8));
        assert_eq!(b.remove("nothing"), None);
        assert!(
            shared(&a, &b) >= SHARDS - 2,
            "only the shards changed are copied"
        );
        assert_eq!((a["app-7"], b["app-7"]), (7, 70));
        assert_eq!((a.get("app-8"), b.get("app-8")), (Some(&8), None));
        assert_eq!((a.len(), b.len()), (2000, 1999));
        assert_eq!(b.iter().count(), 1999);
        assert_eq!(b.insert("app-9".into(), 9), Some(9));
        assert_eq!(b.len(), 1999);
    }
}
