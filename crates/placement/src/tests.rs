//! Unit tests for `place`, one or more per rule (numbers as in `docs/placement.md`).

use super::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// Healthy, idle, soft 10, hard 20, in `region` at `distance_us`.
fn c(region: u32, distance_us: u32) -> Candidate {
    Candidate {
        region,
        distance_us,
        inflight: 0,
        soft_limit: 10,
        hard_limit: 20,
        healthy: true,
        backing_off: false,
        excluded: false,
    }
}

fn load(mut c: Candidate, inflight: u32) -> Candidate {
    c.inflight = inflight;
    c
}

fn full(c: Candidate) -> Candidate {
    load(c, c.hard_limit)
}

fn sick(mut c: Candidate) -> Candidate {
    c.healthy = false;
    c
}

fn backing_off(mut c: Candidate) -> Candidate {
    c.backing_off = true;
    c
}

fn excluded(mut c: Candidate) -> Candidate {
    c.excluded = true;
    c
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

fn none() -> Constraints<'static> {
    Constraints::default()
}

fn chosen(index: usize, rule: Rule, tier: Tier, preference_unmet: bool) -> Decision {
    Decision::Chosen {
        index,
        why: Why { rule, tier },
        preference_unmet,
    }
}

/// The index chosen, panicking on Full/Unavailable.
fn index_of(d: Decision) -> usize {
    match d {
        Decision::Chosen { index, .. } => index,
        other => panic!("expected Chosen, got {other:?}"),
    }
}

#[test]
fn empty_input_is_unavailable() {
    assert_eq!(place(&[], &none(), &mut rng()), Decision::Unavailable);
    let forced = Constraints {
        force_instance: Some(0),
        ..none()
    };
    assert_eq!(place(&[], &forced, &mut rng()), Decision::Unavailable);
}

#[test]
fn never_unhealthy_or_excluded() {
    let cands = [sick(c(1, 10)), excluded(c(1, 10))];
    assert_eq!(place(&cands, &none(), &mut rng()), Decision::Unavailable);
    let cands = [sick(c(1, 10)), excluded(c(1, 10)), load(c(2, 90), 15)];
    for _ in 0..50 {
        assert_eq!(index_of(place(&cands, &none(), &mut rng())), 2);
    }
}

#[test]
fn forced_instance_is_chosen_whatever_its_tier_or_distance() {
    let cands = [c(1, 10), backing_off(load(c(2, 900), 19))];
    let forced = Constraints {
        force_instance: Some(1),
        ..none()
    };
    let want = chosen(1, Rule::ForcedInstance, Tier::BackingOff, false);
    assert_eq!(place(&cands, &forced, &mut rng()), want);
}

#[test]
fn forced_instance_at_hard_limit_is_full() {
    let cands = [c(1, 10), full(c(2, 900))];
    let forced = Constraints {
        force_instance: Some(1),
        ..none()
    };
    let want = Decision::Full {
        preference_unmet: false,
    };
    assert_eq!(place(&cands, &forced, &mut rng()), want);
    // A preference given alongside is reported as unmet.
    let both = Constraints {
        prefer_regions: &[2],
        ..forced
    };
    let want = Decision::Full {
        preference_unmet: true,
    };
    assert_eq!(place(&cands, &both, &mut rng()), want);
}

#[test]
fn forced_instance_unavailable_when_unusable_or_unknown() {
    let cands = [
        c(1, 10),
        sick(c(2, 9)),
        excluded(full(c(2, 9))),
        full(c(3, 9)),
    ];
    for (index, why) in [
        (1, "unhealthy"),
        (2, "excluded, even at its hard limit"),
        (3, "outside the forced regions"),
        (usize::MAX, "a name that matches nothing"),
    ] {
        let forced = Constraints {
            force_instance: Some(index),
            force_regions: &[1, 2],
            ..none()
        };
        assert_eq!(
            place(&cands, &forced, &mut rng()),
            Decision::Unavailable,
            "{why}"
        );
    }
}

#[test]
fn forced_instance_reports_an_unmet_preference() {
    let cands = [c(1, 10), c(2, 10)];
    let cons = Constraints {
        force_instance: Some(1),
        prefer_instance: Some(0),
        ..none()
    };
    let want = chosen(1, Rule::ForcedInstance, Tier::BelowSoft, true);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
    let cons = Constraints {
        force_instance: Some(1),
        prefer_regions: &[2],
        ..none()
    };
    let want = chosen(1, Rule::ForcedInstance, Tier::BelowSoft, false);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
}

#[test]
fn preferred_instance_met_even_when_busier_and_farther() {
    let cands = [c(1, 10), c(1, 10), backing_off(load(c(2, 900), 15))];
    let cons = Constraints {
        prefer_instance: Some(2),
        ..none()
    };
    let want = chosen(2, Rule::PreferredInstance, Tier::BackingOff, false);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
}

#[test]
fn preferred_instance_unmet_falls_back_to_nearest() {
    let cands = [c(1, 10), full(c(2, 5)), sick(c(2, 5))];
    for preferred in [1, 2, usize::MAX] {
        let cons = Constraints {
            prefer_instance: Some(preferred),
            ..none()
        };
        let want = chosen(0, Rule::NearestRegion, Tier::BelowSoft, true);
        assert_eq!(place(&cands, &cons, &mut rng()), want, "{preferred}");
    }
}

#[test]
fn preferred_instance_respects_forced_regions() {
    let cands = [c(1, 10), c(2, 5)];
    let cons = Constraints {
        prefer_instance: Some(1),
        force_regions: &[1],
        ..none()
    };
    let want = chosen(0, Rule::NearestRegion, Tier::BelowSoft, true);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
}

#[test]
fn preferred_regions_in_order() {
    let cands = [c(1, 10), c(2, 50), c(3, 90)];
    let cons = Constraints {
        prefer_regions: &[3, 2],
        ..none()
    };
    let want = chosen(2, Rule::PreferredRegion, Tier::BelowSoft, false);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
    // The first preferred region has nothing usable: the next one.
    let cands = [c(1, 10), c(2, 50), full(c(3, 90))];
    let want = chosen(1, Rule::PreferredRegion, Tier::BelowSoft, false);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
}

#[test]
fn preferred_region_unmet_falls_back_to_nearest() {
    let cands = [c(1, 10), c(2, 50), sick(c(3, 90))];
    for regions in [&[3][..], &[u32::MAX][..], &[3, u32::MAX][..]] {
        let cons = Constraints {
            prefer_regions: regions,
            ..none()
        };
        let want = chosen(0, Rule::NearestRegion, Tier::BelowSoft, true);
        assert_eq!(place(&cands, &cons, &mut rng()), want, "{regions:?}");
    }
}

#[test]
fn preferred_region_with_unmet_instance_reports_unmet() {
    let cands = [c(1, 10), c(2, 50), sick(c(2, 50))];
    let cons = Constraints {
        prefer_instance: Some(2),
        prefer_regions: &[2],
        ..none()
    };
    let want = chosen(1, Rule::PreferredRegion, Tier::BelowSoft, true);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
}

#[test]
fn preferred_region_stays_in_the_region_whatever_the_tier() {
    let cands = [c(1, 10), backing_off(c(2, 50)), c(3, 90)];
    let cons = Constraints {
        prefer_regions: &[2, 3],
        ..none()
    };
    let want = chosen(1, Rule::PreferredRegion, Tier::BackingOff, false);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
}

#[test]
fn nearest_region_by_distance_then_region_value() {
    let cands = [c(5, 300), c(4, 200), c(3, 200), c(1, 900)];
    let want = chosen(2, Rule::NearestRegion, Tier::BelowSoft, false);
    assert_eq!(place(&cands, &none(), &mut rng()), want);
}

#[test]
fn nearest_region_is_never_left_while_usable() {
    // Region 1 is nearest, busy and backing off; region 2 is idle but farther.
    let cands = [
        backing_off(load(c(1, 10), 19)),
        c(2, 50),
        c(2, 50),
        backing_off(load(c(1, 12), 15)),
    ];
    let mut rng = rng();
    let mut hits = [0; 4];
    for _ in 0..200 {
        hits[index_of(place(&cands, &none(), &mut rng))] += 1;
    }
    assert_eq!(hits[1] + hits[2], 0, "{hits:?}");
    assert_eq!(hits[3], 200, "least loaded of the pair: {hits:?}");
    // The nearest region's distance is its nearest usable instance's.
    let cands = [full(c(1, 10)), c(1, 90), c(2, 50)];
    assert_eq!(index_of(place(&cands, &none(), &mut rng)), 2);
}

#[test]
fn many_regions_past_the_counted_ones() {
    // Twelve regions, each met in turn; the nearest (region 11) is met last, past the regions
    // whose tiers the first pass counts, and has one idle and one busy instance.
    let mut cands: Vec<_> = (0..12)
        .map(|r| load(c(r, 1_000 + 100 * (12 - r)), 3))
        .collect();
    cands.push(load(c(11, 1_150), 9));
    cands.push(backing_off(c(11, 1_150)));
    let mut rng = rng();
    for _ in 0..100 {
        let want = chosen(11, Rule::NearestRegion, Tier::BelowSoft, false);
        assert_eq!(place(&cands, &none(), &mut rng), want);
    }
    let cons = Constraints {
        prefer_regions: &[10],
        ..none()
    };
    let want = chosen(10, Rule::PreferredRegion, Tier::BelowSoft, false);
    assert_eq!(place(&cands, &cons, &mut rng), want);
}

#[test]
fn forced_regions_only() {
    let cands = [c(1, 10), c(2, 50), c(3, 90)];
    let cons = Constraints {
        force_regions: &[3, 2],
        ..none()
    };
    let want = chosen(1, Rule::NearestRegion, Tier::BelowSoft, false);
    assert_eq!(place(&cands, &cons, &mut rng()), want);
    let cons = Constraints {
        force_regions: &[u32::MAX],
        ..none()
    };
    assert_eq!(place(&cands, &cons, &mut rng()), Decision::Unavailable);
}

#[test]
fn forced_region_full_is_full_even_when_others_are_free() {
    let cands = [c(1, 10), full(c(2, 50)), sick(c(2, 50))];
    let cons = Constraints {
        force_regions: &[2],
        ..none()
    };
    let want = Decision::Full {
        preference_unmet: false,
    };
    assert_eq!(place(&cands, &cons, &mut rng()), want);
}

#[test]
fn all_full_is_full_and_reports_preference() {
    let cands = [full(c(1, 10)), load(c(2, 50), 25), sick(c(3, 1))];
    let want = Decision::Full {
        preference_unmet: false,
    };
    assert_eq!(place(&cands, &none(), &mut rng()), want);
    let cons = Constraints {
        prefer_instance: Some(0),
        ..none()
    };
    let want = Decision::Full {
        preference_unmet: true,
    };
    assert_eq!(place(&cands, &cons, &mut rng()), want);
}

#[test]
fn full_only_when_the_waiting_could_end() {
    // Unhealthy or excluded at the hard limit: waiting would not help.
    let cands = [sick(full(c(1, 10))), excluded(full(c(2, 10)))];
    assert_eq!(place(&cands, &none(), &mut rng()), Decision::Unavailable);
    // A hard limit of zero never frees a slot.
    let mut closed = c(1, 10);
    closed.hard_limit = 0;
    assert_eq!(place(&[closed], &none(), &mut rng()), Decision::Unavailable);
}

#[test]
fn tiers_below_soft_then_over_soft_then_backing_off() {
    let below = load(c(1, 10), 9);
    let over = load(c(1, 10), 10);
    let off = backing_off(c(1, 10));
    let cases = [
        (vec![off, over, below], 2, Tier::BelowSoft),
        (vec![off, over, full(below)], 1, Tier::OverSoft),
        (vec![off, full(over), full(below)], 0, Tier::BackingOff),
    ];
    for (cands, index, tier) in cases {
        for _ in 0..20 {
            let want = chosen(index, Rule::NearestRegion, tier, false);
            assert_eq!(place(&cands, &none(), &mut rng()), want);
        }
    }
}

#[test]
fn p2c_least_loaded_of_two_always_wins() {
    let cands = [load(c(1, 10), 5), load(c(1, 10), 1)];
    let mut rng = rng();
    for _ in 0..200 {
        assert_eq!(index_of(place(&cands, &none(), &mut rng)), 1);
    }
}

#[test]
fn p2c_never_picks_the_most_loaded() {
    let cands: Vec<_> = (0..8).map(|i| load(c(1, 10), i)).collect();
    let mut rng = rng();
    let mut hits = [0u32; 8];
    for _ in 0..8_000 {
        hits[index_of(place(&cands, &none(), &mut rng))] += 1;
    }
    assert_eq!(hits[7], 0, "{hits:?}");
    // Two distinct uniform draws, the less loaded wins: P(k-th least loaded of n) =
    // 2(n-1-k) / n(n-1), here (7-k)/28.
    for (k, &h) in hits.iter().enumerate() {
        let expected = 8_000 * (7 - k as u32) / 28;
        assert!(h.abs_diff(expected) < 150, "rank {k}: {hits:?}");
    }
}

#[test]
fn equal_loads_spread() {
    let cands = [c(1, 10), c(1, 10), c(1, 10), c(2, 900)];
    let mut rng = rng();
    let mut hits = [0u32; 4];
    for _ in 0..3_000 {
        hits[index_of(place(&cands, &none(), &mut rng))] += 1;
    }
    assert!(hits[..3].iter().all(|&h| h > 800), "{hits:?}");
    assert_eq!(hits[3], 0);
}

#[test]
fn why_displays_stable_words() {
    let why = |rule, tier| Why { rule, tier }.to_string();
    assert_eq!(
        why(Rule::ForcedInstance, Tier::BelowSoft),
        "forced_instance below_soft_limit"
    );
    assert_eq!(
        why(Rule::PreferredInstance, Tier::OverSoft),
        "preferred_instance over_soft_limit"
    );
    assert_eq!(
        why(Rule::PreferredRegion, Tier::BackingOff),
        "preferred_region backing_off"
    );
    assert_eq!(
        why(Rule::NearestRegion, Tier::BelowSoft),
        "nearest_region below_soft_limit"
    );
}
