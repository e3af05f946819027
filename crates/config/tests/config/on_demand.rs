//! Instances started on demand and stopped when idle: the app's keys (`auto_start`,
//! `auto_stop`, `min_running`, `stop_after`, `start_timeout`), an instance's `driver`, their
//! defaults and each validation error with its place.

use std::time::Duration;

use anyedge_config::model::{AutoStop, Driver, MinRunning, OnDemand};

use crate::{errors, ok, one, show};

fn app(keys: &str, driver: &str) -> String {
    format!(
        "[[apps]]\nname = \"sleepy\"\n{keys}\n  [[apps.services]]\n  internal_port = 9001\n  ports = [{{ port = 8080, handlers = [\"http\"] }}]\n\n  [[apps.instances]]\n  id = \"sleepy-1\"\n  address = \"127.0.0.1\"\n  {driver}\n"
    )
}

#[test]
fn defaults_without_the_keys() {
    let c = ok(&app("", ""));
    let a = &c.apps[0];
    assert_eq!(a.on_demand, OnDemand::default());
    assert!(a.on_demand.auto_start);
    assert_eq!(a.on_demand.auto_stop, AutoStop::Off);
    assert_eq!(a.on_demand.min_running, MinRunning::default());
    assert_eq!(a.on_demand.stop_after, Duration::from_secs(300));
    assert_eq!(a.on_demand.start_timeout, Duration::from_secs(20));
    assert_eq!(a.instances[0].driver, None);
}

#[test]
fn the_design_example() {
    let c = ok(&app(
        "auto_start = true\nauto_stop = \"stop\"\nmin_running = 0\nstop_after = \"5m\"\nstart_timeout = \"20s\"\n",
        r#"driver = { type = "command", start = "/usr/local/bin/start-sleepy", stop = "/usr/local/bin/stop-sleepy" }"#,
    ));
    let a = &c.apps[0];
    assert_eq!(a.on_demand.auto_stop, AutoStop::Stop);
    assert_eq!(a.on_demand.stop_after, Duration::from_secs(300));
    assert_eq!(
        a.instances[0].driver,
        Some(Driver::Command {
            start: "/usr/local/bin/start-sleepy".into(),
            stop: "/usr/local/bin/stop-sleepy".into()
        })
    );
    let c = ok(&app(
        "auto_start = false\nmin_running = { total = 2, per_region = 1 }\n",
        r#"driver = { type = "http", url = "http://127.0.0.1:4281/v1/machines/sleepy-1/" }"#,
    ));
    let a = &c.apps[0];
    assert!(!a.on_demand.auto_start);
    assert_eq!(
        a.on_demand.min_running,
        MinRunning {
            total: 2,
            per_region: 1
        }
    );
    assert_eq!(
        a.instances[0].driver,
        Some(Driver::Http {
            url: "http://127.0.0.1:4281/v1/machines/sleepy-1".into()
        }),
        "the trailing slash is dropped"
    );
}

#[test]
fn app_key_errors_have_their_place() {
    one(
        &app("auto_stop = \"suspend\"\n", ""),
        "apps[0].auto_stop",
        "auto_stop =",
        "unknown auto_stop `suspend` (known: \"off\", \"stop\")",
    );
    one(
        &app("stop_after = \"0s\"\n", ""),
        "apps[0].stop_after",
        "stop_after =",
        "greater than zero",
    );
    one(
        &app("start_timeout = \"soon\"\n", ""),
        "apps[0].start_timeout",
        "start_timeout =",
        "",
    );
    one(
        &app("min_running = -1\n", ""),
        "apps[0].min_running",
        "min_running =",
        "must be a count",
    );
    one(
        &app("min_running = { per_region = -2 }\n", ""),
        "apps[0].min_running.per_region",
        "min_running =",
        "must be a count",
    );
}

#[test]
fn driver_errors_have_their_place() {
    one(
        &app("", r#"driver = { type = "ssh", start = "x" }"#),
        "apps[0].instances[0].driver.type",
        "driver =",
        "unknown driver type `ssh`",
    );
    one(
        &app("", r#"driver = { type = "command", start = "up" }"#),
        "apps[0].instances[0].driver",
        "driver =",
        "a \"command\" driver needs `stop`",
    );
    one(
        &app(
            "",
            r#"driver = { type = "command", start = " ", stop = "down" }"#,
        ),
        "apps[0].instances[0].driver.start",
        "driver =",
        "start must not be empty",
    );
    one(
        &app(
            "",
            r#"driver = { type = "http", url = "http://h/m", start = "x" }"#,
        ),
        "apps[0].instances[0].driver.start",
        "driver =",
        "a \"http\" driver has no `start`",
    );
    one(
        &app("", r#"driver = { type = "http", url = "https://h/m" }"#),
        "apps[0].instances[0].driver.url",
        "driver =",
        "must be http://host[:port][/path]",
    );
    one(
        &app("", r#"driver = { type = "http", url = "http://h/m?x=1" }"#),
        "apps[0].instances[0].driver.url",
        "driver =",
        "must be http://host[:port][/path]",
    );
    one(
        &app(
            "",
            r#"driver = { type = "http", url = "http://h/m", spare = 1 }"#,
        ),
        "apps[0].instances[0].driver.spare",
        "driver =",
        "",
    );
    // Every problem is reported, not only the first.
    let errs = errors(&app(
        "auto_stop = \"x\"\nstop_after = \"0s\"\n",
        r#"driver = { type = "command" }"#,
    ));
    assert_eq!(errs.len(), 4, "{}", show(&errs));
}

#[test]
fn a_worker_instance_takes_a_driver() {
    let c = ok(
        "[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n\n[[instances]]\napp = \"sleepy\"\nid = \"s1\"\naddress = \"127.0.0.1:9001\"\ndriver = { type = \"http\", url = \"http://127.0.0.1:4281/v1/machines/s1\" }\n",
    );
    assert!(matches!(
        c.local_instances[0].instance.driver,
        Some(Driver::Http { .. })
    ));
}
