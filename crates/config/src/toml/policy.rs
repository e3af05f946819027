//! The traffic policy keys of an app (`access`, `rate_limit`, `retry_budget`) and of a
//! service (`access`): `docs/config.md`, "Traffic policy".

use super::file::{AccessFile, RateLimitFile, RetryBudgetFile};
use crate::model::{Access, Cidr, RateLimit, RetryBudget};
use crate::path;
use crate::report::Report;
use crate::validate::values;
use std::net::IpAddr;

/// `access = { allow = [...], deny = [...] }`: every block checked; `None` when the key is
/// absent or both lists are empty (nothing to check per request).
pub(super) fn access(f: Option<&AccessFile>, at: &str, r: &mut Report<'_>) -> Option<Box<Access>> {
    let f = f?;
    let mut list = |items: &[String], key: &str| -> Vec<Cidr> {
        let list_at = path::key(at, key);
        items
            .iter()
            .enumerate()
            .filter_map(|(k, s)| r.check(&path::index(&list_at, k), cidr(s)))
            .collect()
    };
    let access = Access {
        allow: list(&f.allow, "allow"),
        deny: list(&f.deny, "deny"),
    };
    (!access.allow.is_empty() || !access.deny.is_empty()).then(|| Box::new(access))
}

/// `203.0.113.0/24`, `2001:db8::/32`, or a bare address (one host).
pub(crate) fn cidr(s: &str) -> Result<Cidr, String> {
    let bad = || {
        format!(
            "invalid address block `{s}`: expected an address or a CIDR block such as 203.0.113.0/24 or 2001:db8::/32"
        )
    };
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
    };
    Cidr::new(addr, prefix)
        .ok_or_else(|| format!("invalid address block `{s}`: the prefix length is at most {max}"))
}

/// `rate_limit = { per_client, burst, total }`; `None` when the key is absent or sets no
/// limit. `burst` defaults to `per_client` and may not be below it.
pub(super) fn rate_limit(
    f: Option<&RateLimitFile>,
    at: &str,
    r: &mut Report<'_>,
) -> Option<RateLimit> {
    let f = f?;
    let mut count = |v: Option<u64>, key: &str| {
        v.and_then(|v| {
            r.check(
                &path::key(at, key),
                values::count_u32(v, 0).map_err(|e| format!("{key} {e}")),
            )
        })
    };
    let per_client = count(f.per_client, "per_client").unwrap_or(0);
    let total = count(f.total, "total").unwrap_or(0);
    let burst = count(f.burst, "burst");
    if f.per_client.unwrap_or(0) == 0 && f.total.unwrap_or(0) == 0 {
        r.error(
            at,
            "a rate_limit needs per_client or total (requests or new connections per second), above 0",
        );
        return None;
    }
    if per_client == 0 && total == 0 {
        return None; // a value that failed validation, reported above
    }
    let burst = match burst {
        Some(b) if b < per_client => {
            r.error(
                &path::key(at, "burst"),
                format!("burst ({b}) is below per_client ({per_client})"),
            );
            per_client
        }
        Some(_) if per_client == 0 => {
            r.error(
                &path::key(at, "burst"),
                "burst is for per_client, which is not set",
            );
            0
        }
        Some(b) => b,
        None => per_client,
    };
    Some(RateLimit {
        per_client,
        burst,
        total,
    })
}

/// `retry_budget = { ratio, min_per_second }`; every key optional.
pub(super) fn retry_budget(
    f: Option<&RetryBudgetFile>,
    at: &str,
    r: &mut Report<'_>,
) -> RetryBudget {
    let d = RetryBudget::default();
    let Some(f) = f else { return d };
    let ratio = match f.ratio {
        Some(x) if x.is_finite() && (0.0..=1.0).contains(&x) => x,
        Some(x) => {
            r.error(
                &path::key(at, "ratio"),
                format!("ratio must be between 0 and 1 (a fraction of recent requests), got {x}"),
            );
            d.ratio
        }
        None => d.ratio,
    };
    let min_per_second = f
        .min_per_second
        .and_then(|v| {
            r.check(
                &path::key(at, "min_per_second"),
                values::count_u32(v, 0).map_err(|e| format!("min_per_second {e}")),
            )
        })
        .unwrap_or(d.min_per_second);
    RetryBudget {
        ratio,
        min_per_second,
    }
}
