//! The catalog: what apps and instances exist, as immutable snapshots swapped atomically, plus the
//! live per-instance state (in-flight counts, connect-failure backoff, outlier ejection) that is
//! keyed by stable instance id and carried across snapshot swaps.
//!
//! Stores (today the config file; later etcd) only produce new configs; [`Snapshot::build`]
//! reuses every app entry whose config did not change, so an update costs what changed.

mod live;
pub mod shards;
mod snapshot;

pub use live::{
    now_nanos, AppLive, Ejection, FailingCheck, InstanceLive, LimitScope, LiveRegistry,
    OutlierState, PeerLive, PolicyLive, Power, PowerState, QueueTicket, Reported, Slot,
    EJECT_AFTER, REPORT_FRESH, REPORT_SILENT,
};
pub use shards::Shards;
pub use snapshot::{AppEntry, AppsDiff, InstanceEntry, PeerEntry, Snapshot};
