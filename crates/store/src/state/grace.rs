//! Worker liveness beyond the catalog: instances that left the catalog with their node's lease
//! (the lease expired in a store outage, or the node lost etcd while its edges still reach it)
//! stay in an edge's config for a bounded grace period while the worker still reports them over
//! a live load feed (`docs/cluster.md`, "Instances lost with a lease").
//!
//! What is graced, and why only that:
//! - The instance's key and its node's key went away together, in one batch of changes (one
//!   watch response, or the diff of one listing): a lease ending takes all its keys in one
//!   revision. An instance deregistered by a node that is still
//!   registered (its file no longer names it) goes at once, and so does every instance of an app
//!   removed with `apps rm` (only apps still in the catalog have instances).
//! - The node has not registered again, or did so less than [`SETTLE`] ago: once its key is
//!   back, what it registers is the truth, but its instances' keys follow its node key one by
//!   one, so the rule holds a moment longer rather than leave the edge with nothing between
//!   the two (an instance put again leaves the rule at once).
//! - The worker reported the instance in its latest load-feed frame, on a feed that is open and
//!   not silent (the caller's `reports`, from the edge): a worker that stopped (its feed ends at
//!   its drain), died or froze, or that no longer runs the instance, is not graced.
//! - At most [`GRACE`] after the loss.
//!
//! Pure bookkeeping with the clock passed in; [`super::CatalogState`] records the losses.

use super::Registered;
use crate::values::NodeValue;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long an instance lost with its node's lease may be kept, at most. Three lease TTLs: a
/// worker whose lease expired registers again within its backoff (at most 5 s) once it reaches
/// etcd; one that cannot reach etcd for this long is taken at the catalog's word.
pub const GRACE: Duration = Duration::from_secs(30);

/// How long instances stay kept after their node registered again (its instance keys follow
/// its node key).
pub const SETTLE: Duration = Duration::from_secs(2);

/// Whether the worker `node` reports the instance `<app>/<id>` over a live load feed.
pub type Reports<'a> = &'a (dyn Fn(&str, &str) -> bool + Sync);

/// Instances and nodes that left the catalog lately, with when.
#[derive(Debug, Default)]
pub(super) struct Departed {
    /// The batch of changes being applied ([`Self::next_batch`]).
    batch: u64,
    /// By (app, instance id): what was registered, when it left, in which batch.
    instances: BTreeMap<(String, String), (Registered, Instant, u64)>,
    /// By id: its last record, when it left, in which batch, when it registered again.
    nodes: BTreeMap<String, (NodeValue, Instant, u64, Option<Instant>)>,
}

/// One instance kept in grace.
pub(super) struct Graced<'a> {
    pub app: &'a str,
    pub registered: &'a Registered,
    pub node: &'a NodeValue,
}

impl Departed {
    /// The changes applied from now on came together (one watch response, one listing's diff).
    pub fn next_batch(&mut self) {
        self.batch += 1;
    }

    pub fn instance_gone(&mut self, app: &str, r: Registered, now: Instant) {
        self.prune(now);
        let key = (app.to_string(), r.instance.id.clone());
        self.instances.insert(key, (r, now, self.batch));
    }

    /// Registered again (by its node or another): no longer departed.
    pub fn instance_back(&mut self, app: &str, id: &str) {
        if !self.instances.is_empty() {
            self.instances.remove(&(app.to_string(), id.to_string()));
        }
    }

    pub fn node_gone(&mut self, v: NodeValue, now: Instant) {
        self.prune(now);
        self.nodes.insert(v.id.clone(), (v, now, self.batch, None));
    }

    /// The node registered again at `now`: what it registers is the truth for its instances
    /// once [`SETTLE`] has passed.
    pub fn node_back(&mut self, id: &str, now: Instant) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.3.get_or_insert(now);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Whether an instance of `app` left lately (one may be kept).
    pub fn mentions(&self, app: &str) -> bool {
        self.instances
            .range((app.to_string(), String::new())..)
            .next()
            .is_some_and(|((a, _), _)| a == app)
    }

    /// The apps [`Self::mentions`] is true of, each once.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        let mut last: Option<&str> = None;
        self.instances.keys().filter_map(move |(a, _)| {
            let new = last != Some(a.as_str());
            last = Some(a.as_str());
            new.then_some(a.as_str())
        })
    }

    /// Whether an instance left less than [`GRACE`] before `now` (one may be kept).
    pub fn any_fresh(&self, now: Instant) -> bool {
        self.instances
            .values()
            .any(|(_, at, _)| now.saturating_duration_since(*at) < GRACE)
    }

    fn prune(&mut self, now: Instant) {
        let live = |at: &Instant| now.saturating_duration_since(*at) < GRACE;
        self.instances.retain(|_, (_, at, _)| live(at));
        self.nodes.retain(|_, (_, at, _, _)| live(at));
    }

    /// The instances of `app` kept now: lost with their node's lease less than [`GRACE`] ago,
    /// and reported by their worker (`reports`).
    pub fn graced<'a>(
        &'a self,
        app: Option<&'a str>,
        now: Instant,
        reports: Reports<'_>,
    ) -> Vec<Graced<'a>> {
        let from = app.map(|a| (a.to_string(), String::new()));
        let range = match &from {
            Some(start) => self.instances.range(start.clone()..),
            None => self.instances.range(..),
        };
        let mut out = Vec::new();
        for ((a, id), (r, at, batch)) in range {
            if app.is_some_and(|want| want != a) {
                break;
            }
            let Some((node, _, node_batch, back)) = self.nodes.get(&r.node) else {
                continue;
            };
            let settled = back.is_some_and(|b| now.saturating_duration_since(b) >= SETTLE);
            let fresh = now.saturating_duration_since(*at) < GRACE && !settled;
            if batch == node_batch && fresh && reports(&r.node, &format!("{a}/{id}")) {
                out.push(Graced {
                    app: a,
                    registered: r,
                    node,
                });
            }
        }
        out
    }

    /// The record of a node that left, while it is remembered.
    pub fn node(&self, id: &str) -> Option<&NodeValue> {
        self.nodes.get(id).map(|(v, _, _, _)| v)
    }
}
