//! The autostop rule, pure: may an idle instance stop now? Fly's excess-capacity rule: only
//! when the rest of its region carries the region's load below their soft limits, and never
//! below `min_running` (in total and per region).

use anyedge_catalog::AppEntry;
use std::time::Instant;

/// Whether the instance at `index` of `app` may be stopped at `now` (it is idle: the caller
/// knows).
pub(super) fn may_stop(app: &AppEntry, index: usize, now: Instant) -> bool {
    let me = &app.instances[index];
    let up = |i: &&anyedge_catalog::InstanceEntry| i.live.power.running() && i.live.healthy(now);
    let others = || {
        app.instances
            .iter()
            .enumerate()
            .filter(move |(k, _)| *k != index)
            .map(|(_, i)| i)
            .filter(up)
    };
    let min = app.config.on_demand.min_running;
    let total_after = others().count() as u64;
    let in_region: Vec<_> = others()
        .filter(|i| i.region_index == me.region_index)
        .collect();
    if total_after < u64::from(min.total) || (in_region.len() as u64) < u64::from(min.per_region) {
        return false;
    }
    let load: u64 = in_region.iter().map(|i| u64::from(i.live.load(now))).sum();
    let soft = u64::from(app.config.concurrency.soft_limit);
    load == 0 || load < soft.saturating_mul(in_region.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyedge_catalog::{LiveRegistry, PowerState, Snapshot};
    use std::sync::Arc;

    fn app(min_running: &str) -> Arc<AppEntry> {
        let text = format!(
            "[node]\nid = \"n\"\nregion = \"ord\"\n[[apps]]\nname = \"s\"\nauto_stop = \"stop\"\nmin_running = {min_running}\nconcurrency = {{ type = \"requests\", soft_limit = 2, hard_limit = 4 }}\n[[apps.services]]\ninternal_port = 9\nports = [{{ port = 80, handlers = [\"http\"] }}]\n[[apps.instances]]\nid = \"a\"\naddress = \"127.0.0.1\"\n[[apps.instances]]\nid = \"b\"\naddress = \"127.0.0.2\"\n[[apps.instances]]\nid = \"c\"\nregion = \"syd\"\naddress = \"127.0.0.3\"\n"
        );
        let config = anyedge_config::parse(&text, "t.toml").expect("valid");
        let snap = Snapshot::build(Arc::new(config), &LiveRegistry::new(), None);
        snap.app("s").expect("app").clone()
    }

    #[test]
    fn stops_only_with_room_elsewhere_in_the_region_and_above_min_running() {
        let a = app("0");
        let now = Instant::now();
        assert!(may_stop(&a, 0, now), "b carries no load");
        let held: Vec<_> = (0..2)
            .map(|_| a.instances[1].live.inflight.acquire())
            .collect();
        assert!(!may_stop(&a, 0, now), "b at its soft limit (2 of 2)");
        drop(held);
        a.instances[1].live.power.set(PowerState::Stopped);
        assert!(
            may_stop(&a, 0, now),
            "nothing runs in the region, no load: to zero"
        );
        let a = app("{ total = 2 }");
        a.instances[1].live.power.set(PowerState::Stopped);
        assert!(!may_stop(&a, 0, now), "only c would be left of 2");
        let a = app("{ per_region = 1 }");
        assert!(may_stop(&a, 0, now), "b stays in ord");
        assert!(!may_stop(&a, 2, now), "c is alone in syd");
    }
}
