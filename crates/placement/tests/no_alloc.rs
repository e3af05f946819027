//! `place` runs once per request: it must not allocate. A counting global allocator (per
//! thread, so the test harness's own threads do not count) checks it on 1,000 candidates and
//! every kind of constraint.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use anyedge_placement::{place, Candidate, Constraints, Decision};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the thread-local counter
// is const-initialised without a destructor, so touching it never allocates or recurses.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn place_never_allocates() {
    let mut rng = SmallRng::seed_from_u64(11);
    let cands: Vec<Candidate> = (0..1_000)
        .map(|i| Candidate {
            region: i % 3,
            distance_us: 1_000 + (i % 3) * 20_000,
            inflight: rng.gen_range(0..=12),
            soft_limit: 8,
            hard_limit: 10,
            healthy: i % 17 != 0,
            backing_off: i % 5 == 0,
            excluded: i % 23 == 0,
        })
        .collect();
    let cases = [
        Constraints::default(),
        Constraints {
            prefer_regions: &[u32::MAX, 2, 1],
            ..Constraints::default()
        },
        Constraints {
            force_regions: &[1, 2],
            prefer_instance: Some(usize::MAX),
            ..Constraints::default()
        },
        Constraints {
            force_instance: Some(4),
            ..Constraints::default()
        },
        Constraints {
            force_regions: &[u32::MAX],
            ..Constraints::default()
        },
    ];
    let mut outcomes = [0usize; 3];
    let before = allocations();
    for _ in 0..200 {
        for cons in &cases {
            outcomes[match place(&cands, cons, &mut rng) {
                Decision::Chosen { .. } => 0,
                Decision::Full { .. } => 1,
                Decision::Unavailable => 2,
            }] += 1;
        }
    }
    let after = allocations();
    assert_eq!(after - before, 0, "place allocated");
    assert!(outcomes[0] > 0 && outcomes[2] > 0, "{outcomes:?}");
}
