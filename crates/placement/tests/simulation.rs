//! Seeded simulations of placement: thousands of random fleets with random constraints, every
//! decision checked against an independent statement of the rules; then admission in virtual
//! time (requests take slots, finish, wait on Full and retry when a slot frees).
//!
//! Each test uses `PLACEMENT_SEED` when set, else a fresh random seed; every failure message
//! says `replay with PLACEMENT_SEED=<seed>`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use anyedge_placement::{place, Candidate, Constraints, Decision, Rule, Tier};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn seed(test: &str) -> u64 {
    let seed = match std::env::var("PLACEMENT_SEED") {
        Ok(s) => s.trim().parse().expect("PLACEMENT_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    eprintln!("{test}: seed {seed} (replay with PLACEMENT_SEED={seed})");
    seed
}

/// Owned constraints, so a request can keep them while it waits.
#[derive(Debug, Clone, Default)]
struct Owned {
    force_regions: Vec<u32>,
    prefer_regions: Vec<u32>,
    force_instance: Option<usize>,
    prefer_instance: Option<usize>,
}

impl Owned {
    fn view(&self) -> Constraints<'_> {
        Constraints {
            force_regions: &self.force_regions,
            prefer_regions: &self.prefer_regions,
            force_instance: self.force_instance,
            prefer_instance: self.prefer_instance,
        }
    }
}

/// 1..=`max` distinct region values, in no particular order (so the tie rule sees varied
/// values).
fn regions(rng: &mut SmallRng, max: usize) -> Vec<u32> {
    let count = rng.gen_range(1..=max);
    let mut out: Vec<u32> = Vec::with_capacity(count);
    while out.len() < count {
        let r = rng.gen_range(0..12);
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// Distances: often shared by several regions (ties), sometimes jittered per instance.
fn distance(rng: &mut SmallRng, region_base: u32) -> u32 {
    if rng.gen_bool(0.3) {
        region_base + rng.gen_range(0..2_000)
    } else {
        region_base
    }
}

fn fleet(rng: &mut SmallRng) -> Vec<Candidate> {
    let regions = regions(rng, 6);
    let bases: Vec<u32> = regions
        .iter()
        .map(|_| [1_000, 1_000, 30_000, 80_000, 100_000][rng.gen_range(0..5)])
        .collect();
    (0..rng.gen_range(1..=60))
        .map(|_| {
            let r = rng.gen_range(0..regions.len());
            let hard_limit = rng.gen_range(0..=8);
            Candidate {
                region: regions[r],
                distance_us: distance(rng, bases[r]),
                // At, over and past the hard limit too; soft sometimes above hard.
                inflight: rng.gen_range(0..=hard_limit + 2),
                soft_limit: rng.gen_range(0..=8),
                hard_limit,
                healthy: rng.gen_bool(0.8),
                backing_off: rng.gen_bool(0.2),
                excluded: rng.gen_bool(0.1),
            }
        })
        .collect()
}

/// Random constraints, including names that match nothing.
fn constraints(rng: &mut SmallRng, cands: &[Candidate]) -> Owned {
    let region = |rng: &mut SmallRng| {
        if rng.gen_bool(0.15) {
            u32::MAX
        } else {
            cands[rng.gen_range(0..cands.len())].region
        }
    };
    let instance = |rng: &mut SmallRng| match rng.gen_range(0..10) {
        0 => usize::MAX,
        1 => cands.len(),
        _ => rng.gen_range(0..cands.len()),
    };
    let mut out = Owned::default();
    if rng.gen_bool(0.2) {
        out.force_regions = (0..rng.gen_range(1..=2)).map(|_| region(rng)).collect();
    }
    if rng.gen_bool(0.3) {
        out.prefer_regions = (0..rng.gen_range(1..=3)).map(|_| region(rng)).collect();
    }
    if rng.gen_bool(0.1) {
        out.force_instance = Some(instance(rng));
    }
    if rng.gen_bool(0.25) {
        out.prefer_instance = Some(instance(rng));
    }
    out
}

/// The rules restated independently of the crate; `Err` says which one a decision broke.
fn check(cands: &[Candidate], cons: &Owned, decision: Decision) -> Result<(), String> {
    let forced_ok = |i: usize| {
        let c = &cands[i];
        (cons.force_regions.is_empty() || cons.force_regions.contains(&c.region))
            && cons.force_instance.is_none_or(|f| f == i)
    };
    let usable = |i: usize| {
        let c = &cands[i];
        c.healthy && !c.excluded && c.inflight < c.hard_limit && forced_ok(i)
    };
    let waitable = |i: usize| {
        let c = &cands[i];
        c.healthy && !c.excluded && c.hard_limit > 0 && c.inflight >= c.hard_limit && forced_ok(i)
    };
    let tier = |c: &Candidate| match (c.backing_off, c.inflight < c.soft_limit) {
        (true, _) => Tier::BackingOff,
        (false, true) => Tier::BelowSoft,
        (false, false) => Tier::OverSoft,
    };
    let all = 0..cands.len();
    let has_preference = cons.prefer_instance.is_some() || !cons.prefer_regions.is_empty();
    let (index, why, preference_unmet) = match decision {
        Decision::Unavailable if all.clone().any(usable) => {
            return Err("Unavailable, yet a candidate is usable".into())
        }
        Decision::Unavailable if all.clone().any(waitable) => {
            return Err("Unavailable, yet a candidate is only full".into())
        }
        Decision::Unavailable => return Ok(()),
        Decision::Full { .. } if all.clone().any(usable) => {
            return Err("Full, yet a candidate is usable".into())
        }
        Decision::Full { .. } if !all.clone().any(waitable) => {
            return Err("Full, yet no candidate would take it once a slot frees".into())
        }
        Decision::Full { preference_unmet } if preference_unmet != has_preference => {
            return Err("Full: preference_unmet is not `a preference was given`".into())
        }
        Decision::Full { .. } => return Ok(()),
        Decision::Chosen {
            index,
            why,
            preference_unmet,
        } => (index, why, preference_unmet),
    };
    if index >= cands.len() || !usable(index) {
        return Err(format!("chose {index}, which is not usable (unhealthy, excluded, at its hard limit or outside the forced constraints)"));
    }
    let chosen = &cands[index];
    if why.tier != tier(chosen) {
        return Err(format!(
            "reported tier {:?}, the candidate is {:?}",
            why.tier,
            tier(chosen)
        ));
    }
    let unmet = cons.prefer_instance.is_some_and(|p| p != index)
        || (!cons.prefer_regions.is_empty() && !cons.prefer_regions.contains(&chosen.region));
    if preference_unmet != unmet {
        return Err(format!(
            "preference_unmet {preference_unmet}, expected {unmet}"
        ));
    }
    let preferred_usable = cons
        .prefer_instance
        .filter(|&p| p < cands.len() && usable(p));
    let first_preferred_region = cons
        .prefer_regions
        .iter()
        .copied()
        .find(|&r| all.clone().any(|i| usable(i) && cands[i].region == r));
    let nearest_region = all
        .clone()
        .filter(|&i| usable(i))
        .map(|i| (cands[i].distance_us, cands[i].region))
        .min()
        .map(|(_, r)| r);
    let (rule, region) = if cons.force_instance.is_some() {
        (Rule::ForcedInstance, None)
    } else if let Some(p) = preferred_usable {
        if index != p {
            return Err(format!(
                "preferred instance {p} is usable but {index} was chosen"
            ));
        }
        (Rule::PreferredInstance, None)
    } else if let Some(r) = first_preferred_region {
        (Rule::PreferredRegion, Some(r))
    } else {
        (Rule::NearestRegion, nearest_region)
    };
    if why.rule != rule {
        return Err(format!("rule {:?}, expected {rule:?}", why.rule));
    }
    let Some(region) = region else { return Ok(()) };
    if chosen.region != region {
        return Err(format!(
            "chose region {}, expected region {region} ({rule:?})",
            chosen.region
        ));
    }
    let members: Vec<usize> = all
        .filter(|&i| usable(i) && cands[i].region == region)
        .collect();
    let best = members.iter().map(|&i| tier(&cands[i])).min();
    if best != Some(why.tier) {
        return Err(format!(
            "tier {:?}, but {best:?} is non-empty in the region",
            why.tier
        ));
    }
    let tier_members: Vec<usize> = members
        .into_iter()
        .filter(|&i| tier(&cands[i]) == why.tier)
        .collect();
    // Power of two choices: the winner is never the strictly most loaded of its tier.
    if tier_members.len() > 1
        && !tier_members
            .iter()
            .any(|&i| i != index && cands[i].inflight >= chosen.inflight)
    {
        return Err("power of two choices picked the tier's most loaded candidate".into());
    }
    Ok(())
}

#[test]
fn random_fleets_keep_every_rule() {
    let seed = seed("random_fleets_keep_every_rule");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut seen = [0usize; 3];
    for fleet_no in 0..20_000 {
        let cands = fleet(&mut rng);
        for _ in 0..4 {
            let cons = constraints(&mut rng, &cands);
            let decision = place(&cands, &cons.view(), &mut rng);
            seen[match decision {
                Decision::Chosen { .. } => 0,
                Decision::Full { .. } => 1,
                Decision::Unavailable => 2,
            }] += 1;
            if let Err(broken) = check(&cands, &cons, decision) {
                panic!(
                    "fleet {fleet_no}: {broken}\n{decision:?}\n{cons:?}\n{cands:#?}\n\
                     replay with PLACEMENT_SEED={seed}"
                );
            }
        }
    }
    eprintln!("chosen, full, unavailable: {seen:?}");
    // The generator reaches all three outcomes in quantity.
    assert!(
        seen.iter().all(|&n| n > 1_000),
        "{seen:?}: replay with PLACEMENT_SEED={seed}"
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A request ends and frees its slot on this candidate.
    Finish(usize),
    /// A candidate's health or backoff changes.
    Flip(usize),
    /// Request number `n` arrives.
    Arrive(usize),
}

struct Request {
    cons: Owned,
    /// One instance already tried (a retry), if any.
    excluded: Option<usize>,
    duration: u64,
}

/// What happened to the requests of the admission runs.
#[derive(Debug, Default)]
struct Tally {
    started: usize,
    rejected: usize,
    /// Placements answered Full (the request waited).
    full: usize,
}

/// One admission run in virtual time.
fn admission_run(rng: &mut SmallRng, run: usize, seed: u64, tally: &mut Tally) {
    let replay = |what: String| format!("run {run}: {what}: replay with PLACEMENT_SEED={seed}");
    let regions = regions(rng, 4);
    let mut fleet: Vec<Candidate> = (0..rng.gen_range(1..=20))
        .map(|_| {
            let r = rng.gen_range(0..regions.len());
            let soft_limit = rng.gen_range(1..=4);
            Candidate {
                region: regions[r],
                distance_us: 1_000 * (r as u32 + 1),
                inflight: 0,
                soft_limit,
                hard_limit: soft_limit + rng.gen_range(0..=4),
                healthy: rng.gen_bool(0.9),
                backing_off: rng.gen_bool(0.1),
                excluded: false,
            }
        })
        .collect();
    let mut events = BinaryHeap::new();
    // Work already in flight when the run starts, up to the hard limit.
    for (i, c) in fleet.iter_mut().enumerate() {
        c.inflight = rng.gen_range(0..=c.hard_limit);
        for _ in 0..c.inflight {
            events.push(Reverse((rng.gen_range(1..60u64), Event::Finish(i))));
        }
    }
    let requests: Vec<Request> = (0..200)
        .map(|_| Request {
            cons: constraints(rng, &fleet),
            excluded: rng.gen_bool(0.1).then(|| rng.gen_range(0..fleet.len())),
            duration: rng.gen_range(1..80),
        })
        .collect();
    let mut t = 0;
    for n in 0..requests.len() {
        t += rng.gen_range(0..3u64);
        events.push(Reverse((t, Event::Arrive(n))));
        if rng.gen_bool(0.05) {
            events.push(Reverse((t, Event::Flip(rng.gen_range(0..fleet.len())))));
        }
    }
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let (mut started, mut rejected) = (0, 0);
    let mut view = fleet.clone();

    while let Some(Reverse((now, event))) = events.pop() {
        // Whom to (re)place now, and whether to stop at the first that gets a slot.
        let (mut queue, one_slot) = match event {
            Event::Arrive(n) => (VecDeque::from([n]), false),
            Event::Finish(i) => {
                let c = &mut fleet[i];
                assert!(
                    c.inflight > 0,
                    "{}",
                    replay(format!("candidate {i} finished below zero"))
                );
                c.inflight -= 1;
                (std::mem::take(&mut waiting), true)
            }
            Event::Flip(i) => {
                let c = &mut fleet[i];
                if rng.gen_bool(0.5) {
                    c.healthy = !c.healthy;
                } else {
                    c.backing_off = !c.backing_off;
                }
                (std::mem::take(&mut waiting), false)
            }
        };
        let mut slot_taken = false;
        while let Some(n) = queue.pop_front() {
            if one_slot && slot_taken {
                waiting.push_back(n);
                continue;
            }
            let req = &requests[n];
            view.copy_from_slice(&fleet);
            for (i, c) in view.iter_mut().enumerate() {
                c.excluded = req.excluded == Some(i);
            }
            let decision = place(&view, &req.cons.view(), rng);
            if let Err(broken) = check(&view, &req.cons, decision) {
                panic!(
                    "{}",
                    replay(format!(
                        "request {n} at {now}: {broken}\n{decision:?}\n{:?}\n{view:#?}",
                        req.cons
                    ))
                );
            }
            match decision {
                Decision::Chosen { index, .. } => {
                    let c = &mut fleet[index];
                    c.inflight += 1;
                    assert!(
                        c.inflight <= c.hard_limit,
                        "{}",
                        replay(format!("candidate {index} over its hard limit"))
                    );
                    events.push(Reverse((now + req.duration, Event::Finish(index))));
                    started += 1;
                    slot_taken = true;
                }
                Decision::Full { .. } => {
                    tally.full += 1;
                    waiting.push_back(n);
                }
                Decision::Unavailable => rejected += 1,
            }
        }
    }
    assert!(
        waiting.is_empty(),
        "{}",
        replay(format!(
            "{} requests still waiting at the end",
            waiting.len()
        ))
    );
    for (i, c) in fleet.iter().enumerate() {
        assert_eq!(
            c.inflight,
            0,
            "{}",
            replay(format!("candidate {i} still has work in flight"))
        );
    }
    assert_eq!(
        started + rejected,
        requests.len(),
        "{}",
        replay("requests lost".into())
    );
    tally.started += started;
    tally.rejected += rejected;
}

#[test]
fn admission_in_virtual_time_returns_every_slot() {
    let seed = seed("admission_in_virtual_time_returns_every_slot");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for run in 0..300 {
        admission_run(&mut rng, run, seed, &mut tally);
    }
    eprintln!("{tally:?}");
    // The runs exercise waiting as well as starting and rejecting.
    assert!(
        tally.started > 4 * tally.rejected && tally.full > 1_000,
        "{tally:?}: replay with PLACEMENT_SEED={seed}"
    );
}
