//! The worker's own admission: it is the truth about its instances. A request or connection
//! names one of this node's instances; it is refused (and the edge places it elsewhere) when
//! the instance is not this node's, the node drains, the instance is unhealthy, or the app's
//! budget on this node or the instance's hard limit has no room.

use crate::Shared;
use anyedge_admission::BudgetGuard;
use anyedge_backhaul::header::RefuseReason;
use anyedge_catalog::{AppEntry, Slot, Snapshot};
use std::time::Instant;

/// The index of one of this node's own instances of `app` named `instance`, or why a worker
/// refuses it: an instance of another app here is `WrongApp` (never carried across apps).
pub(crate) fn own_instance<'a>(
    snapshot: Option<&Snapshot>,
    app: Option<&'a AppEntry>,
    instance: &str,
) -> Result<(&'a AppEntry, usize), RefuseReason> {
    let own = |a: &AppEntry| {
        a.instance_index(instance)
            .filter(|&i| a.instances[i].peer.is_none())
    };
    if let Some(found) = app.and_then(|a| own(a).map(|i| (a, i))) {
        return Ok(found);
    }
    let elsewhere = snapshot.is_some_and(|s| s.apps.values().any(|a| own(a).is_some()));
    Err(if elsewhere {
        RefuseReason::WrongApp
    } else {
        RefuseReason::UnknownInstance
    })
}

/// The worker's own admission, the same for an HTTP stream and a TCP connection: not
/// draining, the instance healthy, a slot in the app's budget on this node and one under the
/// instance's hard limit.
pub(crate) fn admit(
    shared: &Shared,
    app: &AppEntry,
    index: usize,
) -> Result<(Slot, Slot), RefuseReason> {
    takes_work(shared, app, index)?;
    let app_slot = app
        .live
        .try_admit(app.config.limits.max_inflight)
        .ok_or(RefuseReason::AppOverloaded)?;
    let slot = inst_slot(app, index)?;
    Ok((app_slot, slot))
}

/// [`admit`] for a raw TCP connection: it takes a slot of the app's connection budget on this
/// node (`limits.max_connections`, as a client connection to one of this node's own ports
/// does), not of its HTTP request budget (`limits.max_inflight`).
pub(super) fn admit_tcp(
    shared: &Shared,
    app: &AppEntry,
    index: usize,
) -> Result<(BudgetGuard, Slot), RefuseReason> {
    takes_work(shared, app, index)?;
    let app_slot = app
        .live
        .connections
        .try_acquire(app.config.limits.max_connections)
        .ok_or(RefuseReason::AppOverloaded)?;
    let slot = inst_slot(app, index)?;
    Ok((app_slot, slot))
}

/// Whether this node takes new work for the instance: not draining, the instance healthy.
/// A node draining after an upgrade's hand-over still does: its successor at the same address
/// takes the new connections, and a stream that reaches this one on an old connection before
/// the edge saw its GOAWAY is served here, not sent elsewhere (there may be no elsewhere).
fn takes_work(shared: &Shared, app: &AppEntry, index: usize) -> Result<(), RefuseReason> {
    let handed_over = shared.handed_over.load(std::sync::atomic::Ordering::SeqCst);
    if shared.drain.is_draining() && !handed_over {
        return Err(RefuseReason::Draining);
    }
    let live = &app.instances[index].live;
    // Stopped (or starting) by this node's driver: not ready for an edge's stream.
    if !live.healthy(Instant::now()) || !live.power.running() {
        return Err(RefuseReason::Unhealthy);
    }
    Ok(())
}

/// A slot of the instance's own (`concurrency.hard_limit`).
fn inst_slot(app: &AppEntry, index: usize) -> Result<Slot, RefuseReason> {
    app.instances[index]
        .live
        .try_take(app.config.concurrency.hard_limit, &app.live)
        .ok_or(RefuseReason::Full)
}

#[cfg(test)]
mod tests;
