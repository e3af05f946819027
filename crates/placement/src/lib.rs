//! Placement: the choice of instance for one connection or request. Pure code: callers pass a
//! view of each candidate's load and state and an RNG; nothing here touches a socket or a clock.
//!
//! Today's rule (the TCP path): skip candidates already tried for this connection; prefer
//! candidates not in connect-failure backoff; among those, least in-flight by power-of-two
//! random choices. Candidates in backoff are still tried when nothing else is left, so one
//! reachable instance is never ignored because of stale failures.

use rand::Rng;

/// What placement knows about one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Connections or requests in flight to it (from this node).
    pub inflight: u32,
    /// Recently failed to connect; try only when nothing better is left.
    pub backing_off: bool,
    /// Already tried for this connection: never choose again.
    pub excluded: bool,
}

/// Pick an index into `candidates`, or `None` when every candidate is excluded.
pub fn choose<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> Option<usize> {
    let fresh = |c: &Candidate| !c.excluded && !c.backing_off;
    let any = |c: &Candidate| !c.excluded;
    p2c(candidates, fresh, rng).or_else(|| p2c(candidates, any, rng))
}

/// Power of two choices among the candidates `eligible` admits: two distinct random picks,
/// the less loaded wins (the first on a tie).
fn p2c<R: Rng + ?Sized>(
    candidates: &[Candidate],
    eligible: impl Fn(&Candidate) -> bool,
    rng: &mut R,
) -> Option<usize> {
    let n = candidates.iter().filter(|c| eligible(c)).count();
    let nth = |k: usize| {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| eligible(c))
            .nth(k)
            .map(|(i, _)| i)
    };
    match n {
        0 => None,
        1 => nth(0),
        _ => {
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ia, ib) = (nth(a)?, nth(b)?);
            if candidates[ib].inflight < candidates[ia].inflight {
                Some(ib)
            } else {
                Some(ia)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn c(inflight: u32, backing_off: bool, excluded: bool) -> Candidate {
        Candidate {
            inflight,
            backing_off,
            excluded,
        }
    }

    #[test]
    fn empty_and_all_excluded() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(choose(&[], &mut rng), None);
        assert_eq!(choose(&[c(0, false, true)], &mut rng), None);
    }

    #[test]
    fn two_candidates_least_loaded_wins() {
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..100 {
            assert_eq!(
                choose(&[c(5, false, false), c(1, false, false)], &mut rng),
                Some(1)
            );
        }
    }

    #[test]
    fn backoff_only_when_nothing_else() {
        let mut rng = SmallRng::seed_from_u64(3);
        let cands = [c(0, true, false), c(100, false, false)];
        assert_eq!(choose(&cands, &mut rng), Some(1));
        let cands = [c(0, true, false), c(100, false, true)];
        assert_eq!(choose(&cands, &mut rng), Some(0));
    }

    #[test]
    fn equal_loads_spread() {
        let mut rng = SmallRng::seed_from_u64(4);
        let cands = [c(0, false, false), c(0, false, false), c(0, false, false)];
        let mut hits = [0u32; 3];
        for _ in 0..3000 {
            if let Some(i) = choose(&cands, &mut rng) {
                hits[i] += 1;
            }
        }
        assert!(hits.iter().all(|&h| h > 700), "{hits:?}");
    }

    proptest! {
        #[test]
        fn never_excluded_and_fresh_first(
            seed in any::<u64>(),
            cands in proptest::collection::vec((0u32..10, any::<bool>(), any::<bool>()), 0..20),
        ) {
            let cands: Vec<_> = cands.into_iter().map(|(i, b, e)| c(i, b, e)).collect();
            let mut rng = SmallRng::seed_from_u64(seed);
            match choose(&cands, &mut rng) {
                None => prop_assert!(cands.iter().all(|c| c.excluded)),
                Some(i) => {
                    prop_assert!(!cands[i].excluded);
                    if cands.iter().any(|c| !c.excluded && !c.backing_off) {
                        prop_assert!(!cands[i].backing_off);
                    }
                }
            }
        }
    }
}
