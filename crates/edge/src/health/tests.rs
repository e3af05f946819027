//! The checker's snapshot diff, and guards taken and released by real check tasks.

use super::*;
use anyedge_catalog::LiveRegistry;
use std::time::{Duration, Instant};

const CHECK: &str =
    r#"{ type = "http", path = "/healthz", interval = "1s", timeout = "1s", grace_period = "1h" }"#;

fn app(name: &str, checks: &str, instances: &[(&str, &str)], extra: &str) -> String {
    let mut t = format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"*.{name}.test\", \"{name}.test\"]\n{extra}\n  [[apps.services]]\n  internal_port = 8080\n  ports = [ {{ port = 10080, handlers = [\"http\"] }} ]\n  checks = [ {checks} ]\n"
    );
    for (id, address) in instances {
        t += &format!("  [[apps.instances]]\n  id = \"{id}\"\n  address = \"{address}\"\n");
    }
    t
}

struct Catalog {
    registry: Arc<LiveRegistry>,
    current: Option<Arc<Snapshot>>,
}

impl Catalog {
    fn new() -> Catalog {
        Catalog {
            registry: LiveRegistry::new(),
            current: None,
        }
    }

    fn apply(&mut self, toml: &str) -> Arc<Snapshot> {
        let config = anyedge_config::parse(toml, "t.toml").unwrap_or_else(|d| panic!("{d}"));
        let next = Arc::new(Snapshot::build(
            Arc::new(config),
            &self.registry,
            self.current.as_deref(),
        ));
        self.current = Some(next.clone());
        next
    }
}

fn update(started: usize, stopped: usize, kept: usize) -> HealthUpdate {
    HealthUpdate {
        started,
        stopped,
        kept,
    }
}

#[tokio::test]
async fn health_checks_are_diffed_by_instance_check_and_target() {
    let checker = HealthChecker::new(Handle::current(), Metrics::new());
    let mut catalog = Catalog::new();
    let two = [("one", "127.0.0.1"), ("two", "127.0.0.1:9")];
    let base = app("a", CHECK, &two, "") + &app("quiet", "", &two, "");
    assert_eq!(checker.update(&catalog.apply(&base)), update(2, 0, 0));
    assert_eq!(checker.update(&catalog.apply(&base)), update(0, 0, 2));
    // an unrelated change to the app, another app: the checks keep running
    let other = app(
        "a",
        CHECK,
        &two,
        "concurrency = { type = \"requests\", soft_limit = 5, hard_limit = 6 }",
    ) + &app("b", "", &two, "");
    assert_eq!(checker.update(&catalog.apply(&other)), update(0, 0, 2));
    // a changed check restarts every instance's task
    let slower = CHECK.replace("interval = \"1s\"", "interval = \"2s\"");
    assert_eq!(
        checker.update(&catalog.apply(&app("a", &slower, &two, ""))),
        update(2, 2, 0)
    );
    // a moved instance restarts its own task only; a removed one stops
    let moved = [("one", "127.0.0.1:7"), ("three", "127.0.0.1")];
    assert_eq!(
        checker.update(&catalog.apply(&app("a", &slower, &moved, ""))),
        update(2, 2, 0)
    );
    let moved_again = [("one", "127.0.0.1:7"), ("three", "127.0.0.2")];
    assert_eq!(
        checker.update(&catalog.apply(&app("a", &slower, &moved_again, ""))),
        update(1, 1, 1)
    );
    // a second check on the same instances is its own task
    let both = format!("{slower}, {{ type = \"tcp\", grace_period = \"1h\" }}");
    let with_both = catalog.apply(&app("a", &both, &moved_again, ""));
    assert_eq!(checker.update(&with_both), update(2, 0, 2));
    assert_eq!(checker.running(), 4);
    // Updated by the snapshots' diffs, the checks are those of the snapshot taken whole.
    let afresh = HealthChecker::new(Handle::current(), Metrics::new());
    assert_eq!(afresh.update(&with_both), update(4, 0, 0));
    assert_eq!(
        checker.update(&catalog.apply(&app("a", "", &moved_again, ""))),
        update(0, 4, 0)
    );
    assert_eq!(checker.running(), 0);
}

#[tokio::test]
async fn health_probe_targets_and_host_header() {
    let mut catalog = Catalog::new();
    let toml = app("a", CHECK, &[("one", "10.0.0.1"), ("two", "[::1]:81")], "")
        + &app("bare", CHECK, &[("x", "10.0.0.2:9000")], "").replace(
            "hostnames = [\"*.bare.test\", \"bare.test\"]",
            "hostnames = [\"*.bare.test\"]",
        );
    let snapshot = catalog.apply(&toml);
    let wanted = wanted_checks(snapshot.apps.values());
    let probe = |app: &str, inst: &str| {
        let id = CheckId {
            instance: InstanceId::new(app, inst),
            service: 0,
            check: 0,
        };
        let (spec, label) = &wanted[&id];
        assert_eq!(&**label, "services[0].checks[0] http /healthz");
        let p = &spec.probe;
        (p.host.clone(), p.port, p.authority.clone())
    };
    assert_eq!(
        probe("a", "one"),
        ("10.0.0.1".into(), 8080, "a.test".into())
    );
    assert_eq!(probe("a", "two"), ("::1".into(), 81, "a.test".into()));
    assert_eq!(
        probe("bare", "x"),
        ("10.0.0.2".into(), 9000, "10.0.0.2:9000".into()),
        "a wildcard is no Host: the instance address is"
    );
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn health_failing_check_holds_the_instance_out_until_removed() {
    let metrics = Metrics::new();
    let checker = HealthChecker::new(Handle::current(), metrics.clone());
    let mut catalog = Catalog::new();
    // a port nobody listens on: bound, then closed
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let tcp = r#"{ type = "tcp", interval = "20ms", timeout = "20ms", grace_period = "0s", unhealthy_threshold = 2 }"#;
    let snapshot = catalog.apply(&app("a", tcp, &[("one", &address)], ""));
    checker.update(&snapshot);
    let live = snapshot.apps["a"].instances[0].live.clone();
    assert!(live.healthy(Instant::now()), "unknown is healthy");
    wait_for("the check to fail", || !live.healthy(Instant::now())).await;
    assert!(metrics.app("a").health_checks(false) >= 2);
    assert_eq!(metrics.app("a").health_checks(true), 0);
    checker.update(&catalog.apply(&app("a", "", &[("one", &address)], "")));
    wait_for("the guard to be released", || live.healthy(Instant::now())).await;
    // stopping the checker releases guards the same way
    checker.update(&catalog.apply(&app("a", tcp, &[("one", &address)], "")));
    wait_for("the check to fail again", || !live.healthy(Instant::now())).await;
    drop(checker);
    wait_for("the guard to be released on stop", || {
        live.healthy(Instant::now())
    })
    .await;
}
