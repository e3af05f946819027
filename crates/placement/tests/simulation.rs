//! Seeded simulations of placement: thousands of random fleets with random constraints, every
//! decision checked against an independent statement of the rules (`Oracle`); then admission
//! in virtual time (requests take slots, finish, wait on Full and retry when a slot frees).
//!
//! Each test uses `PLACEMENT_SEED` when set, else a fresh random seed; every failure message
//! says `replay with PLACEMENT_SEED=<seed>`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use anyedge_placement::{place, Candidate, Constraints, Decision, Rule, Tier, Why};
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
        let r = rng.gen_range(0..16);
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// 1..=60 candidates. Up to 6 regions; one fleet in 10 up to 12, past the regions `place`
/// counts in its first pass. Distances often shared by several regions (ties), sometimes
/// jittered per instance; loads at, over and past the hard limit too; soft sometimes above
/// hard; hard sometimes zero.
fn fleet(rng: &mut SmallRng) -> Vec<Candidate> {
    let max_regions = if rng.gen_bool(0.1) { 12 } else { 6 };
    let regions = regions(rng, max_regions);
    let bases: Vec<u32> = regions
        .iter()
        .map(|_| [1_000, 1_000, 30_000, 80_000, 100_000][rng.gen_range(0..5)])
        .collect();
    (0..rng.gen_range(1..=60))
        .map(|_| {
            let r = rng.gen_range(0..regions.len());
            let hard_limit = rng.gen_range(0..=8);
            let jitter = if rng.gen_bool(0.3) {
                rng.gen_range(0..2_000)
            } else {
                0
            };
            Candidate {
                region: regions[r],
                distance_us: bases[r] + jitter,
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

/// Random constraints, including names that match nothing (`u32::MAX`, `usize::MAX`, and an
/// index one past the end).
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

/// The rules restated independently of the crate, the plain way (no cleverness, allocation
/// allowed); `check` says which rule a decision broke.
struct Oracle<'a> {
    cands: &'a [Candidate],
    cons: &'a Owned,
}

impl Oracle<'_> {
    fn forced_ok(&self, i: usize) -> bool {
        let c = &self.cands[i];
        (self.cons.force_regions.is_empty() || self.cons.force_regions.contains(&c.region))
            && self.cons.force_instance.is_none_or(|f| f == i)
    }

    fn usable(&self, i: usize) -> bool {
        let c = &self.cands[i];
        c.healthy && !c.excluded && c.inflight < c.hard_limit && self.forced_ok(i)
    }

    /// Would take it once a slot frees.
    fn waitable(&self, i: usize) -> bool {
        let c = &self.cands[i];
        c.healthy
            && !c.excluded
            && c.hard_limit > 0
            && c.inflight >= c.hard_limit
            && self.forced_ok(i)
    }

    fn tier(c: &Candidate) -> Tier {
        match (c.backing_off, c.inflight < c.soft_limit) {
            (true, _) => Tier::BackingOff,
            (false, true) => Tier::BelowSoft,
            (false, false) => Tier::OverSoft,
        }
    }

    fn any(&self, f: impl Fn(usize) -> bool) -> bool {
        (0..self.cands.len()).any(f)
    }

    fn check(&self, decision: Decision) -> Result<(), String> {
        let has_preference =
            self.cons.prefer_instance.is_some() || !self.cons.prefer_regions.is_empty();
        let any_usable = self.any(|i| self.usable(i));
        let any_waitable = self.any(|i| self.waitable(i));
        match decision {
            Decision::Chosen {
                index,
                why,
                preference_unmet,
            } => self.check_chosen(index, why, preference_unmet),
            _ if any_usable => Err("not Chosen, yet a candidate is usable".into()),
            Decision::Full { .. } if !any_waitable => {
                Err("Full, yet no candidate would take it once a slot frees".into())
            }
            Decision::Full { preference_unmet } if preference_unmet != has_preference => {
                Err("Full: preference_unmet is not `a preference was given`".into())
            }
            Decision::Unavailable if any_waitable => {
                Err("Unavailable, yet a candidate is only full".into())
            }
            Decision::Full { .. } | Decision::Unavailable => Ok(()),
        }
    }

    fn check_chosen(&self, index: usize, why: Why, preference_unmet: bool) -> Result<(), String> {
        if index >= self.cands.len() || !self.usable(index) {
            return Err(format!(
                "chose {index}: unhealthy, excluded, at its hard limit or outside the forced \
                 constraints"
            ));
        }
        let chosen = &self.cands[index];
        if why.tier != Self::tier(chosen) {
            return Err(format!(
                "tier {:?}, the candidate's is {:?}",
                why.tier,
                Self::tier(chosen)
            ));
        }
        let unmet = self.cons.prefer_instance.is_some_and(|p| p != index)
            || (!self.cons.prefer_regions.is_empty()
                && !self.cons.prefer_regions.contains(&chosen.region));
        if preference_unmet != unmet {
            return Err(format!(
                "preference_unmet {preference_unmet}, expected {unmet}"
            ));
        }
        let (rule, region) = self.expected(index)?;
        if why.rule != rule {
            return Err(format!("rule {:?}, expected {rule:?}", why.rule));
        }
        match region {
            Some(region) => self.check_within_region(index, why.tier, region, rule),
            None => Ok(()),
        }
    }

    /// The rule that applies, and the region to choose in when it is a region rule.
    fn expected(&self, index: usize) -> Result<(Rule, Option<u32>), String> {
        let usable_in = |r: u32| self.any(|i| self.usable(i) && self.cands[i].region == r);
        let preferred = self.cons.prefer_instance;
        if self.cons.force_instance.is_some() {
            Ok((Rule::ForcedInstance, None))
        } else if let Some(p) = preferred.filter(|&p| p < self.cands.len() && self.usable(p)) {
            if index == p {
                Ok((Rule::PreferredInstance, None))
            } else {
                Err(format!(
                    "preferred instance {p} is usable, {index} was chosen"
                ))
            }
        } else if let Some(&r) = self.cons.prefer_regions.iter().find(|&&r| usable_in(r)) {
            Ok((Rule::PreferredRegion, Some(r)))
        } else {
            let nearest = (0..self.cands.len())
                .filter(|&i| self.usable(i))
                .map(|i| (self.cands[i].distance_us, self.cands[i].region))
                .min();
            Ok((Rule::NearestRegion, nearest.map(|(_, r)| r)))
        }
    }

    /// In `region`, in its best non-empty tier, and never the strictly most loaded member of
    /// that tier (power of two choices).
    fn check_within_region(
        &self,
        index: usize,
        tier: Tier,
        region: u32,
        rule: Rule,
    ) -> Result<(), String> {
        let chosen = &self.cands[index];
        if chosen.region != region {
            return Err(format!(
                "chose region {}, expected {region} ({rule:?})",
                chosen.region
            ));
        }
        let members: Vec<usize> = (0..self.cands.len())
            .filter(|&i| self.usable(i) && self.cands[i].region == region)
            .collect();
        let best = members.iter().map(|&i| Self::tier(&self.cands[i])).min();
        if best != Some(tier) {
            return Err(format!(
                "tier {tier:?}, but {best:?} is non-empty in the region"
            ));
        }
        let in_tier: Vec<usize> = members
            .into_iter()
            .filter(|&i| Self::tier(&self.cands[i]) == tier)
            .collect();
        let another_as_loaded = in_tier
            .iter()
            .any(|&i| i != index && self.cands[i].inflight >= chosen.inflight);
        if in_tier.len() > 1 && !another_as_loaded {
            return Err("power of two choices picked the tier's most loaded candidate".into());
        }
        Ok(())
    }
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
            let oracle = Oracle {
                cands: &cands,
                cons: &cons,
            };
            if let Err(broken) = oracle.check(decision) {
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

/// One admission run: a fleet, requests arriving over virtual time, health flips.
struct Admission {
    /// Names the run in failure messages.
    replay: String,
    fleet: Vec<Candidate>,
    requests: Vec<Request>,
    events: BinaryHeap<Reverse<(u64, Event)>>,
    waiting: VecDeque<usize>,
    tally: Tally,
}

impl Admission {
    fn new(rng: &mut SmallRng, replay: String) -> Admission {
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
        let waiting = VecDeque::new();
        let tally = Tally::default();
        Admission {
            replay,
            fleet,
            requests,
            events,
            waiting,
            tally,
        }
    }

    fn run(mut self, rng: &mut SmallRng) -> Tally {
        while let Some(Reverse((now, event))) = self.events.pop() {
            match event {
                Event::Arrive(n) => {
                    self.try_start(n, now, rng);
                }
                Event::Finish(i) => {
                    let c = &mut self.fleet[i];
                    assert!(
                        c.inflight > 0,
                        "candidate {i} finished below zero: {}",
                        self.replay
                    );
                    c.inflight -= 1;
                    self.retry_waiting(now, rng, true);
                }
                Event::Flip(i) => {
                    let c = &mut self.fleet[i];
                    if rng.gen_bool(0.5) {
                        c.healthy = !c.healthy;
                    } else {
                        c.backing_off = !c.backing_off;
                    }
                    self.retry_waiting(now, rng, false);
                }
            }
        }
        self.assert_drained();
        self.tally
    }

    /// Ask again for the waiting requests, in arrival order; after a finish only one slot
    /// freed, so stop at the first that gets it.
    fn retry_waiting(&mut self, now: u64, rng: &mut SmallRng, one_slot: bool) {
        let mut queue = std::mem::take(&mut self.waiting);
        while let Some(n) = queue.pop_front() {
            if self.try_start(n, now, rng) && one_slot {
                self.waiting.extend(queue.drain(..));
            }
        }
    }

    /// Place request `n`, check the decision and act on it; true when it started.
    fn try_start(&mut self, n: usize, now: u64, rng: &mut SmallRng) -> bool {
        let req = &self.requests[n];
        let mut view = self.fleet.clone();
        for (i, c) in view.iter_mut().enumerate() {
            c.excluded = req.excluded == Some(i);
        }
        let decision = place(&view, &req.cons.view(), rng);
        let oracle = Oracle {
            cands: &view,
            cons: &req.cons,
        };
        if let Err(broken) = oracle.check(decision) {
            panic!(
                "request {n} at {now}: {broken}\n{decision:?}\n{:?}\n{view:#?}\n{}",
                req.cons, self.replay
            );
        }
        match decision {
            Decision::Chosen { index, .. } => {
                let c = &mut self.fleet[index];
                c.inflight += 1;
                assert!(
                    c.inflight <= c.hard_limit,
                    "candidate {index} over its hard limit: {}",
                    self.replay
                );
                self.events
                    .push(Reverse((now + req.duration, Event::Finish(index))));
                self.tally.started += 1;
                return true;
            }
            Decision::Full { .. } => {
                self.tally.full += 1;
                self.waiting.push_back(n);
            }
            Decision::Unavailable => self.tally.rejected += 1,
        }
        false
    }

    /// Every request started or was turned away, and every slot came back.
    fn assert_drained(&self) {
        assert!(
            self.waiting.is_empty(),
            "{} requests still waiting: {}",
            self.waiting.len(),
            self.replay
        );
        for (i, c) in self.fleet.iter().enumerate() {
            assert_eq!(
                c.inflight, 0,
                "candidate {i} still has work in flight: {}",
                self.replay
            );
        }
        let settled = self.tally.started + self.tally.rejected;
        assert_eq!(
            settled,
            self.requests.len(),
            "requests lost: {}",
            self.replay
        );
    }
}

#[test]
fn admission_in_virtual_time_returns_every_slot() {
    let seed = seed("admission_in_virtual_time_returns_every_slot");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut total = Tally::default();
    for run in 0..300 {
        let replay = format!("run {run}: replay with PLACEMENT_SEED={seed}");
        let tally = Admission::new(&mut rng, replay).run(&mut rng);
        total.started += tally.started;
        total.rejected += tally.rejected;
        total.full += tally.full;
    }
    eprintln!("{total:?}");
    // The runs exercise waiting as well as starting and rejecting.
    assert!(
        total.started > 4 * total.rejected && total.full > 1_000,
        "{total:?}: replay with PLACEMENT_SEED={seed}"
    );
}
