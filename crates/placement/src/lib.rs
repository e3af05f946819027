//! Placement: the choice of instance for one connection or request. Pure code: callers pass a
//! view of each candidate's region, distance, load and state, the request's constraints and an
//! RNG; nothing here touches a socket, a clock or the allocator.
//!
//! The rules (after fly-proxy's documented behaviour; `docs/placement.md` is the contract):
//! a forced instance is the only choice; a preferred instance wins when usable; otherwise the
//! first preferred region with a usable instance, else the nearest region with one; within the
//! region, the best tier (below soft limit, over soft limit, backing off); within the tier,
//! power of two random choices on in-flight counts.

pub mod distance;

use std::fmt;

use rand::Rng;

/// What placement knows about one instance of the app, as seen from this edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Interned region of the instance (equal values = same region).
    pub region: u32,
    /// Estimated round-trip time from this edge to the instance, in microseconds (see
    /// [`distance`]). Smaller is nearer.
    pub distance_us: u32,
    /// Requests (HTTP) or connections (TCP) in flight to it.
    pub inflight: u32,
    pub soft_limit: u32,
    pub hard_limit: u32,
    /// Active checks pass and not passively ejected.
    pub healthy: bool,
    /// A recent connect failure (not yet ejected): a lower tier within its region.
    pub backing_off: bool,
    /// Already tried for this request, or excluded by a replay `elsewhere`: never chosen.
    pub excluded: bool,
}

impl Candidate {
    /// At (or, after a limit was lowered, over) its hard limit: takes nothing more now.
    pub fn at_hard_limit(&self) -> bool {
        self.inflight >= self.hard_limit
    }

    /// The tier this candidate is in when it is usable (rule 6).
    pub fn tier(&self) -> Tier {
        if self.backing_off {
            Tier::BackingOff
        } else if self.inflight < self.soft_limit {
            Tier::BelowSoft
        } else {
            Tier::OverSoft
        }
    }

    /// Healthy, not excluded, and able to take work once a slot frees. A hard limit of zero
    /// never frees a slot, so such a candidate is never worth waiting for.
    fn can_ever_take(&self) -> bool {
        self.healthy && !self.excluded && self.hard_limit > 0
    }
}

/// The request's constraints (from P-Force-Region / P-Prefer-Region / P-Force-Instance-Id /
/// P-Prefer-Instance-Id headers and replays). Indices/regions already resolved by the caller;
/// a name that matches nothing is given as a region value no candidate has (`u32::MAX`) or,
/// for instances, as `Some(usize::MAX)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Constraints<'a> {
    /// Only these regions (empty: no constraint).
    pub force_regions: &'a [u32],
    /// These regions first, in this order (empty: none).
    pub prefer_regions: &'a [u32],
    /// Only this candidate index.
    pub force_instance: Option<usize>,
    /// This candidate index if it is usable.
    pub prefer_instance: Option<usize>,
}

impl Constraints<'_> {
    fn has_preference(&self) -> bool {
        self.prefer_instance.is_some() || !self.prefer_regions.is_empty()
    }

    fn in_forced_regions(&self, c: &Candidate) -> bool {
        self.force_regions.is_empty() || self.force_regions.contains(&c.region)
    }

    /// Rule 1 without the forced instance (handled before anything else).
    fn usable(&self, c: &Candidate) -> bool {
        c.healthy && !c.excluded && !c.at_hard_limit() && self.in_forced_regions(c)
    }

    /// Would take it once a slot frees (rule 8), forced instance aside.
    fn waitable(&self, c: &Candidate) -> bool {
        c.can_ever_take() && c.at_hard_limit() && self.in_forced_regions(c)
    }

    /// A preference was given and choosing `candidates[index]` does not satisfy it: another
    /// instance was preferred, or the instance is outside every preferred region.
    fn unmet_by(&self, index: usize, c: &Candidate) -> bool {
        self.prefer_instance.is_some_and(|p| p != index)
            || (!self.prefer_regions.is_empty() && !self.prefer_regions.contains(&c.region))
    }

    fn chosen(&self, index: usize, c: &Candidate, rule: Rule) -> Decision {
        Decision::Chosen {
            index,
            why: Why {
                rule,
                tier: c.tier(),
            },
            preference_unmet: self.unmet_by(index, c),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it to `candidates[index]`.
    Chosen {
        index: usize,
        why: Why,
        preference_unmet: bool,
    },
    /// Candidates that satisfy the constraints and are healthy and not excluded exist, but all
    /// are at their hard limit: the caller queues and asks again when a slot frees.
    Full { preference_unmet: bool },
    /// Nothing can take it: no healthy, non-excluded candidate satisfies the constraints.
    Unavailable,
}

/// Why a candidate was chosen (for the `P-Route` debug header and logs). Displays as two
/// words, the rule then the tier: `nearest_region below_soft_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Why {
    pub rule: Rule,
    pub tier: Tier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    ForcedInstance,
    PreferredInstance,
    PreferredRegion,
    NearestRegion,
}

/// Ordered best first; the values index per-tier counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    BelowSoft = 0,
    OverSoft = 1,
    BackingOff = 2,
}

impl Rule {
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::ForcedInstance => "forced_instance",
            Rule::PreferredInstance => "preferred_instance",
            Rule::PreferredRegion => "preferred_region",
            Rule::NearestRegion => "nearest_region",
        }
    }
}

impl Tier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::BelowSoft => "below_soft_limit",
            Tier::OverSoft => "over_soft_limit",
            Tier::BackingOff => "backing_off",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.rule, self.tier)
    }
}

/// Choose the instance for one request or connection. No allocation: one pass to find the
/// region and count its tiers, one (partial) pass to find the two random members.
pub fn place<R: Rng + ?Sized>(
    candidates: &[Candidate],
    constraints: &Constraints<'_>,
    rng: &mut R,
) -> Decision {
    if let Some(forced) = constraints.force_instance {
        return place_forced(candidates, constraints, forced);
    }
    if let Some(preferred) = constraints.prefer_instance {
        if let Some(c) = candidates.get(preferred) {
            if constraints.usable(c) {
                return constraints.chosen(preferred, c, Rule::PreferredInstance);
            }
        }
    }
    // Rule 1 hoisted out of the loops: the common case, no forced region, gets its own copy.
    if constraints.force_regions.is_empty() {
        let usable = |c: &Candidate| c.healthy && !c.excluded && !c.at_hard_limit();
        place_by_region(candidates, constraints, usable, rng)
    } else {
        place_by_region(candidates, constraints, |c| constraints.usable(c), rng)
    }
}

/// Rule 2: the forced instance or nothing.
fn place_forced(
    candidates: &[Candidate],
    constraints: &Constraints<'_>,
    forced: usize,
) -> Decision {
    match candidates.get(forced) {
        Some(c) if constraints.usable(c) => constraints.chosen(forced, c, Rule::ForcedInstance),
        Some(c) if constraints.waitable(c) => Decision::Full {
            preference_unmet: constraints.has_preference(),
        },
        _ => Decision::Unavailable,
    }
}

/// Rules 4 to 8, `usable` being rule 1 for these constraints.
fn place_by_region<R: Rng + ?Sized>(
    candidates: &[Candidate],
    constraints: &Constraints<'_>,
    usable: impl Fn(&Candidate) -> bool + Copy,
    rng: &mut R,
) -> Decision {
    let survey = Survey::of(candidates, constraints, usable);
    let (rule, region) = match (survey.preferred_region, survey.usable) {
        (Some((_, region)), _) => (Rule::PreferredRegion, region),
        (None, true) => (Rule::NearestRegion, region_of_key(survey.nearest)),
        (None, false) if survey.any_waitable => {
            return Decision::Full {
                preference_unmet: constraints.has_preference(),
            }
        }
        (None, false) => return Decision::Unavailable,
    };
    let member = |c: &Candidate| c.region == region && usable(c);
    let counts = match survey.tiers.get(region) {
        Some(counts) => counts,
        None => count_tiers(candidates, member),
    };
    match p2c(candidates, member, counts, rng) {
        Some((index, c)) => constraints.chosen(index, c, rule),
        // Unreachable: the survey saw a usable candidate in `region`.
        None => Decision::Unavailable,
    }
}

/// One pass over the candidates: where the usable ones are, how many of each tier each region
/// has, and whether any candidate is worth waiting for.
struct Survey {
    /// (position in `prefer_regions`, region) of the earliest preferred region with a usable
    /// candidate.
    preferred_region: Option<(usize, u32)>,
    /// `nearest_key` of the nearest usable candidate; meaningful only when `usable`.
    nearest: u64,
    /// Some candidate is usable.
    usable: bool,
    /// Some candidate is only at its hard limit (rule 8).
    any_waitable: bool,
    tiers: RegionTiers,
}

impl Survey {
    fn of(
        candidates: &[Candidate],
        constraints: &Constraints<'_>,
        usable: impl Fn(&Candidate) -> bool,
    ) -> Survey {
        let mut survey = Survey {
            preferred_region: None,
            nearest: u64::MAX,
            usable: false,
            any_waitable: false,
            tiers: RegionTiers::default(),
        };
        for c in candidates {
            if !usable(c) {
                survey.any_waitable |= constraints.waitable(c);
                continue;
            }
            survey.usable = true;
            survey.tiers.add(c.region, c.tier());
            survey.nearest = survey.nearest.min(nearest_key(c));
            if constraints.prefer_regions.is_empty() {
                continue;
            }
            if let Some(pos) = constraints
                .prefer_regions
                .iter()
                .position(|&r| r == c.region)
            {
                if survey.preferred_region.is_none_or(|(p, _)| pos < p) {
                    survey.preferred_region = Some((pos, c.region));
                }
            }
        }
        survey
    }
}

/// Orders candidates by distance, then region value (rule 5's tie break), in one compare.
fn nearest_key(c: &Candidate) -> u64 {
    u64::from(c.distance_us) << 32 | u64::from(c.region)
}

fn region_of_key(key: u64) -> u32 {
    // The low half: truncation is the point.
    key as u32
}

/// Regions whose tiers the survey counts; apps have a handful. A region past these (in the
/// order met) is counted by one more pass if it is the one chosen.
const COUNTED_REGIONS: usize = 8;

/// Usable candidates per tier (`Tier as usize`), for the first `COUNTED_REGIONS` regions met.
#[derive(Default)]
struct RegionTiers {
    len: usize,
    regions: [u32; COUNTED_REGIONS],
    counts: [[usize; 3]; COUNTED_REGIONS],
}

impl RegionTiers {
    /// The slot of `region`. Searches the whole fixed-size array (measured faster than the
    /// `len` prefix); a match in an unused slot (a region equal to the zero filler) is none.
    fn find(&self, region: u32) -> Option<usize> {
        let k = self.regions.iter().position(|&r| r == region)?;
        (k < self.len).then_some(k)
    }

    fn add(&mut self, region: u32, tier: Tier) {
        // Indices below `len` ≤ COUNTED_REGIONS, and `Tier as usize` < 3.
        match self.find(region) {
            Some(k) => self.counts[k][tier as usize] += 1,
            None if self.len < COUNTED_REGIONS => {
                self.regions[self.len] = region;
                self.counts[self.len][tier as usize] = 1;
                self.len += 1;
            }
            None => {}
        }
    }

    fn get(&self, region: u32) -> Option<[usize; 3]> {
        self.find(region).map(|k| self.counts[k])
    }
}

fn count_tiers(candidates: &[Candidate], member: impl Fn(&Candidate) -> bool) -> [usize; 3] {
    let mut counts = [0; 3];
    for c in candidates.iter().filter(|c| member(c)) {
        counts[c.tier() as usize] += 1;
    }
    counts
}

/// Rules 6 and 7 among the candidates `member` admits, `counts` being their number per tier:
/// the best non-empty tier, then two distinct uniformly random members of it, the one with
/// fewer in flight winning (the first drawn on a tie). `None` when `counts` are all zero.
fn p2c<'c, R: Rng + ?Sized>(
    candidates: &'c [Candidate],
    member: impl Fn(&Candidate) -> bool,
    counts: [usize; 3],
    rng: &mut R,
) -> Option<(usize, &'c Candidate)> {
    let (tier, n) = [Tier::BelowSoft, Tier::OverSoft, Tier::BackingOff]
        .into_iter()
        .zip(counts)
        .find(|&(_, n)| n > 0)?;
    let mut members = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| member(c) && c.tier() == tier);
    if n == 1 {
        return members.next();
    }
    let a = rng.gen_range(0..n);
    let mut b = rng.gen_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    // One partial pass: the lower rank, then the higher one after it.
    let (low, high) = (a.min(b), a.max(b));
    let at_low = members.nth(low)?;
    let at_high = members.nth(high - low - 1)?;
    let (first, second) = if a < b {
        (at_low, at_high)
    } else {
        (at_high, at_low)
    };
    Some(if second.1.inflight < first.1.inflight {
        second
    } else {
        first
    })
}

#[cfg(test)]
mod tests;
