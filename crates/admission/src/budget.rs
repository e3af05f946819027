//! A counter with a limit given at acquire time (limits change on reload; counts must not).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Shared in-flight count. Cloning shares the count.
#[derive(Clone, Default)]
pub struct Budget {
    count: Arc<AtomicU32>,
}

impl Budget {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take a slot if fewer than `limit` are held.
    pub fn try_acquire(&self, limit: u32) -> Option<BudgetGuard> {
        let mut current = self.count.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.count.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(BudgetGuard {
                        count: self.count.clone(),
                    })
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Take a slot unconditionally (counting only).
    pub fn acquire(&self) -> BudgetGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        BudgetGuard {
            count: self.count.clone(),
        }
    }

    pub fn in_use(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }
}

/// One held slot; released on drop.
pub struct BudgetGuard {
    count: Arc<AtomicU32>,
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_enforced_and_slots_return() {
        let b = Budget::new();
        let g1 = b.try_acquire(2);
        let g2 = b.try_acquire(2);
        assert!(g1.is_some() && g2.is_some());
        assert!(b.try_acquire(2).is_none());
        drop(g1);
        assert_eq!(b.in_use(), 1);
        assert!(b.try_acquire(2).is_some());
        drop(g2);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn a_lowered_limit_admits_nothing_until_below_it() {
        let b = Budget::new();
        let held: Vec<_> = (0..5).filter_map(|_| b.try_acquire(10)).collect();
        assert_eq!(held.len(), 5);
        assert!(b.try_acquire(3).is_none());
        drop(held);
        assert!(b.try_acquire(3).is_some());
    }
}
