//! An app's `outlier` key: defaults, every key set, turning it off, and each validation error
//! with its place.

use std::time::Duration;

use anyedge_config::model::Outlier;

use crate::{errors, line_of, ok, one, show};

fn with(outlier: &str) -> String {
    format!("[[apps]]\nname = \"a\"\noutlier = {outlier}\n")
}

#[test]
fn defaults_apply_without_the_key() {
    let c = ok("[[apps]]\nname = \"a\"\n");
    let o = &c.apps[0].outlier;
    assert_eq!(*o, Outlier::default());
    assert_eq!(o.consecutive_failures, 5);
    assert_eq!(o.base_ejection, Duration::from_secs(1));
    assert_eq!(o.max_ejection, Duration::from_secs(30));
    assert_eq!(o.gateway_errors, vec![502, 503, 504]);
    assert!(o.enabled());
}

#[test]
fn every_key_set() {
    let c = ok(&with(
        r#"{ consecutive_failures = 3, base_ejection = "250ms", max_ejection = "4s", gateway_errors = [504, 500, 504] }"#,
    ));
    let o = &c.apps[0].outlier;
    assert_eq!(o.consecutive_failures, 3);
    assert_eq!(o.base_ejection, Duration::from_millis(250));
    assert_eq!(o.max_ejection, Duration::from_secs(4));
    assert_eq!(o.gateway_errors, vec![500, 504], "sorted, no duplicates");
    assert!(o.is_gateway_error(500) && !o.is_gateway_error(502));
}

#[test]
fn the_design_example_and_partial_tables() {
    let c = ok(&with(
        r#"{ consecutive_failures = 5, base_ejection = "1s" }"#,
    ));
    assert_eq!(c.apps[0].outlier, Outlier::default());
    // A base longer than the default cap raises the cap to it.
    let c = ok(&with(r#"{ base_ejection = "1m" }"#));
    assert_eq!(c.apps[0].outlier.max_ejection, Duration::from_secs(60));
    // Only timeouts and resets count.
    let c = ok(&with("{ gateway_errors = [] }"));
    assert!(c.apps[0].outlier.gateway_errors.is_empty());
}

#[test]
fn zero_failures_turns_it_off() {
    let c = ok(&with("{ consecutive_failures = 0 }"));
    assert!(!c.apps[0].outlier.enabled());
}

#[test]
fn ejection_doubles_up_to_the_cap() {
    let o = Outlier::default();
    let secs = |n| o.ejection(n).as_secs();
    assert_eq!((secs(1), secs(2), secs(3), secs(5)), (1, 2, 4, 16));
    assert_eq!((secs(6), secs(7), secs(1000)), (30, 30, 30));
    assert_eq!(secs(0), 1, "0 reads as the first");
}

#[test]
fn bad_durations() {
    one(
        &with(r#"{ base_ejection = "soon" }"#),
        "apps[0].outlier.base_ejection",
        "outlier",
        "invalid duration `soon`",
    );
    one(
        &with(r#"{ base_ejection = "0s" }"#),
        "apps[0].outlier.base_ejection",
        "outlier",
        "must be greater than zero",
    );
    one(
        &with(r#"{ max_ejection = "0s" }"#),
        "apps[0].outlier.max_ejection",
        "outlier",
        "must be greater than zero",
    );
}

#[test]
fn max_shorter_than_base() {
    one(
        &with(r#"{ base_ejection = "2s", max_ejection = "500ms" }"#),
        "apps[0].outlier.max_ejection",
        "outlier",
        "max_ejection (500ms) is shorter than base_ejection (2s)",
    );
}

#[test]
fn gateway_errors_are_5xx() {
    one(
        &with("{ gateway_errors = [502, 404] }"),
        "apps[0].outlier.gateway_errors[1]",
        "outlier",
        "gateway error status must be a 5xx status (500-599), got 404",
    );
    one(
        &with("{ gateway_errors = [70000] }"),
        "apps[0].outlier.gateway_errors[0]",
        "outlier",
        "got 70000",
    );
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let text = "[[apps]]\nname = \"a\"\n\n[[apps]]\nname = \"b\"\noutlier = { max_ejection = \"0s\", base_ejection = \"x\", gateway_errors = [200, 599, 600] }\n";
    let errs = errors(text);
    let paths: Vec<_> = errs.iter().map(|d| d.path.as_str()).collect();
    assert!(
        paths.contains(&"apps[1].outlier.max_ejection"),
        "{}",
        show(&errs)
    );
    assert!(
        paths.contains(&"apps[1].outlier.base_ejection"),
        "{}",
        show(&errs)
    );
    assert!(
        paths.contains(&"apps[1].outlier.gateway_errors[0]"),
        "{}",
        show(&errs)
    );
    assert!(
        paths.contains(&"apps[1].outlier.gateway_errors[2]"),
        "{}",
        show(&errs)
    );
    for d in &errs {
        assert_eq!(d.line, Some(line_of(text, "outlier")), "{d}");
    }
}

#[test]
fn a_negative_count_is_a_type_error_at_its_key() {
    one(
        &with("{ consecutive_failures = -1 }"),
        "apps[0].outlier.consecutive_failures",
        "outlier",
        "expected a non-negative integer",
    );
}

#[test]
fn unknown_key_in_outlier() {
    one(
        &with("{ consecutive_failure = 5 }"),
        "apps[0].outlier.consecutive_failure",
        "outlier",
        "unknown key",
    );
}
