//! Value decoding: lenient about what a newer node may add, strict about what this one needs.

use super::*;

const APPS: &str = r#"
[[apps]]
name = "hello"
hostnames = ["hello.example.com", "*.hello.example.com"]
concurrency = { type = "requests", soft_limit = 5, hard_limit = 8 }
limits = { max_inflight = 100, queue = 7, queue_timeout = "1m 30s", max_connections = 50 }
tokens_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
replay_from = ["other"]
outlier = { consecutive_failures = 3, base_ejection = "2s", max_ejection = "1m", gateway_errors = [502] }
access = { allow = ["203.0.113.0/24", "2001:db8::/32"], deny = ["203.0.113.9"] }
rate_limit = { per_client = 100, burst = 200, total = 10000 }
retry_budget = { ratio = 0.25, min_per_second = 3 }
  [[apps.services]]
  internal_port = 8080
  access = { deny = ["::1"] }
  force_https = true
  http_options = { h2_backend = true, idle_timeout = "250ms" }
  tcp_options = { idle_timeout = "0s" }
  ports = [ { port = 80, handlers = ["http"] }, { port = 443, handlers = ["tls", "http"] },
            { port = 5432, handlers = ["proxy_proto"], proxy_proto = "v2", bind = "127.0.0.2" } ]
  checks = [ { type = "http", path = "/healthz?x=1", interval = "5s", timeout = "2s", grace_period = "0s",
               unhealthy_threshold = 3, healthy_threshold = 2 }, { type = "tcp" } ]
  [[apps.certificates]]
  cert = "/etc/hello.pem"
  key = "/etc/hello-key.pem"

[[apps]]
name = "bare"
"#;

fn apps() -> Vec<App> {
    anyedge_config::parse_apps(APPS, "test", None).expect("valid apps")
}

#[test]
fn an_app_round_trips_through_its_value() {
    for app in apps() {
        let bytes = encode_app(&app);
        let (back, ignored) = decode_app(&bytes, &app.name).expect("decodes");
        assert_eq!(back, app);
        assert!(ignored.is_empty(), "{ignored:?}");
    }
}

#[test]
fn unknown_fields_anywhere_are_ignored_and_named() {
    let app = &apps()[0];
    let mut v: Value = serde_json::from_slice(&encode_app(app)).expect("json");
    v["schema"] = 7.into();
    v["future"] = json!({"x": 1});
    v["services"][0]["ports"][0]["weight"] = 3.into();
    v["limits"]["burst"] = 2.into();
    let (back, mut ignored) =
        decode_app(&serde_json::to_vec(&v).expect("json"), "hello").expect("decodes");
    assert_eq!(&back, app);
    ignored.sort();
    assert_eq!(
        ignored,
        [
            "apps[0].future",
            "apps[0].limits.burst",
            "apps[0].services[0].ports[0].weight"
        ]
    );
}

#[test]
fn bad_app_values_are_errors_not_panics() {
    let good = String::from_utf8(encode_app(&apps()[1])).expect("utf-8");
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not JSON"),
        (r#"{"name":"bare"}"#.into(), "schema"),
        (r#"{"schema":0,"name":"bare"}"#.into(), "schema"),
        (r#"[1,2]"#.into(), "schema"),
        (good.clone(), "the key says `other`"),
        (
            r#"{"schema":1,"name":"bare","concurrency":{"soft_limit":9,"hard_limit":3}}"#.into(),
            "soft_limit",
        ),
        (
            r#"{"schema":1,"name":"bare","instances":[{"id":"i","address":"127.0.0.1:1"}]}"#.into(),
            "instances",
        ),
        (
            r#"{"schema":1,"name":"bare","limits":{"queue":1e400}}"#.into(),
            "",
        ),
        (
            r#"{"schema":1,"name":"bare","limits":{"queue":18446744073709551615}}"#.into(),
            "out of range",
        ),
    ];
    for (value, needle) in cases {
        let key = if value == good { "other" } else { "bare" };
        let err = decode_app(value.as_bytes(), key)
            .expect_err(&value)
            .to_string();
        assert!(err.contains(needle), "{value}: {err}");
    }
}

#[test]
fn an_instance_with_a_driver_says_so_and_no_more() {
    let (v, i) = InstanceValue::decode(
        br#"{"schema":1,"id":"s-1","region":"iad","address":"127.0.0.1:9001","node":"w1","driver":"command"}"#,
        "s-1",
    )
    .expect("decodes");
    assert_eq!(v.driver.as_deref(), Some("command"));
    assert_eq!(i.driver, Some(anyedge_config::Driver::Elsewhere));
    let mut own = i.clone();
    own.driver = Some(anyedge_config::Driver::Http {
        url: "http://127.0.0.1:1/m".into(),
    });
    let text = String::from_utf8(InstanceValue::new(&own, "w1").encode()).expect("utf-8");
    assert!(text.contains(r#""driver":"http""#), "{text}");
    assert!(
        !text.contains("127.0.0.1:1/m"),
        "the driver's settings stay on its node"
    );
    own.driver = None;
    let text = String::from_utf8(InstanceValue::new(&own, "w1").encode()).expect("utf-8");
    assert!(!text.contains("driver"), "absent without one: {text}");
}

#[test]
fn instance_values_decode_leniently_and_check_what_matters() {
    let (v, i) = InstanceValue::decode(
        br#"{"schema":2,"id":"i-1","region":"ord","address":"10.0.0.5:8080","node":"ord-1","weight":9}"#,
        "i-1",
    )
    .expect("decodes");
    assert_eq!(
        (v.node.as_str(), i.address.to_string().as_str()),
        ("ord-1", "10.0.0.5:8080")
    );
    assert_eq!(
        InstanceValue::decode(&v.encode(), "i-1").expect("again").0,
        v
    );
    for (bad, needle) in [
        (
            &br#"{"id":"i-1","region":"ord","address":"a:1","node":"n"}"#[..],
            "schema",
        ),
        (
            br#"{"schema":1,"id":"i-2","region":"ord","address":"a:1","node":"n"}"#,
            "key says",
        ),
        (
            br#"{"schema":1,"id":"i-1","region":"ord","address":"::1:80","node":"n"}"#,
            "brackets",
        ),
        (
            br#"{"schema":1,"id":"i-1","region":"o r d","address":"a:1","node":"n"}"#,
            "region",
        ),
        (
            br#"{"schema":1,"id":"i-1","address":"a:1","node":"n"}"#,
            "region",
        ),
    ] {
        let err = InstanceValue::decode(bad, "i-1")
            .expect_err("bad")
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn node_values_decode_leniently() {
    let n = NodeValue::decode(
        br#"{"schema":1,"id":"n1","region":"syd","roles":["edge"]}"#,
        "n1",
    )
    .expect("decodes");
    assert_eq!(n.advertise, None);
    assert!(NodeValue::decode(br#"{"schema":1,"id":"n2","region":"syd"}"#, "n1").is_err());
}
