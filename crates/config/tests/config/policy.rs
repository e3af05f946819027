//! The traffic policy keys: `access` (app and service), `rate_limit`, `retry_budget`, their
//! defaults, and each validation error with its place.

use anyedge_config::model::{RateLimit, RetryBudget};

use crate::{errors, ok, one, show};

fn app(keys: &str) -> String {
    format!("[[apps]]\nname = \"a\"\n{keys}\n")
}

#[test]
fn defaults_without_the_keys() {
    let c = ok(&app(""));
    let a = &c.apps[0];
    assert_eq!((a.access.as_ref(), a.rate_limit), (None, None));
    assert_eq!(a.retry_budget, RetryBudget::default());
    assert_eq!(
        (a.retry_budget.ratio, a.retry_budget.min_per_second),
        (0.2, 10)
    );
}

#[test]
fn the_design_example() {
    let c = ok(&app(
        r#"access = { allow = ["203.0.113.0/24", "2001:db8::/32"], deny = ["203.0.113.9/32"] }
rate_limit = { per_client = 100, burst = 200, total = 10000 }
retry_budget = { ratio = 0.2, min_per_second = 10 }
  [[apps.services]]
  access = { deny = ["::1", "10.0.0.0/8"] }
  ports = [ { port = 5432 } ]"#,
    ));
    let a = &c.apps[0];
    let access = a.access.as_deref().expect("access");
    let shown = |l: &[anyedge_config::Cidr]| l.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert_eq!(shown(&access.allow), ["203.0.113.0/24", "2001:db8::/32"]);
    assert_eq!(shown(&access.deny), ["203.0.113.9/32"]);
    assert_eq!(
        a.rate_limit,
        Some(RateLimit {
            per_client: 100,
            burst: 200,
            total: 10000
        })
    );
    let service = a.services[0].access.as_deref().expect("service access");
    assert_eq!(shown(&service.deny), ["::1/128", "10.0.0.0/8"]);
    assert!(service.allow.is_empty());
}

#[test]
fn burst_defaults_to_per_client_and_empty_access_is_none() {
    let c = ok(&app(
        "rate_limit = { per_client = 5 }\naccess = { allow = [] }",
    ));
    let a = &c.apps[0];
    assert_eq!(a.rate_limit.map(|l| (l.burst, l.total)), Some((5, 0)));
    assert_eq!(a.access, None);
    let c = ok(&app("rate_limit = { total = 50 }"));
    assert_eq!(c.apps[0].rate_limit.map(|l| l.per_client), Some(0));
}

#[test]
fn bad_address_blocks_are_placed() {
    let text = app(r#"access = { allow = ["203.0.113.0/24", "nope"], deny = ["10.0.0.0/33"] }"#);
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", show(&errs));
    assert_eq!(errs[0].path, "apps[0].access.allow[1]");
    assert!(
        errs[0].message.contains("invalid address block `nope`"),
        "{}",
        errs[0]
    );
    assert_eq!(errs[0].line, Some(3));
    assert_eq!(errs[1].path, "apps[0].access.deny[0]");
    assert!(errs[1].message.contains("at most 32"), "{}", errs[1]);
    one(
        &app(
            "  [[apps.services]]\n  access = { deny = [\"::1/129\"] }\n  ports = [ { port = 1 } ]",
        ),
        "apps[0].services[0].access.deny[0]",
        "::1/129",
        "at most 128",
    );
    one(
        &app(r#"access = { allow = ["10.0.0.0/8"], denied = [] }"#),
        "apps[0].access.denied",
        "denied",
        "unknown",
    );
}

#[test]
fn bad_rate_limits() {
    one(
        &app("rate_limit = { burst = 3 }"),
        "apps[0].rate_limit",
        "rate_limit",
        "needs per_client or total",
    );
    one(
        &app("rate_limit = { per_client = 10, burst = 3 }"),
        "apps[0].rate_limit.burst",
        "rate_limit",
        "burst (3) is below per_client (10)",
    );
    one(
        &app("rate_limit = { total = 10, burst = 30 }"),
        "apps[0].rate_limit.burst",
        "rate_limit",
        "burst is for per_client",
    );
    one(
        &app("rate_limit = { per_client = 99999999999 }"),
        "apps[0].rate_limit.per_client",
        "rate_limit",
        "too large",
    );
}

#[test]
fn bad_retry_budgets() {
    one(
        &app("retry_budget = { ratio = 1.5 }"),
        "apps[0].retry_budget.ratio",
        "retry_budget",
        "between 0 and 1",
    );
    one(
        &app("retry_budget = { min_per_second = -1 }"),
        "apps[0].retry_budget.min_per_second",
        "retry_budget",
        "",
    );
    let c = ok(&app("retry_budget = { ratio = 0.0, min_per_second = 0 }"));
    assert_eq!(c.apps[0].retry_budget.min_per_second, 0);
}
