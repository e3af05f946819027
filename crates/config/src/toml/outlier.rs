//! An app's `outlier` key: passive ejection of instances that time out, reset or answer
//! gateway errors (`docs/health.md`).

use super::file::OutlierFile;
use super::sections::duration;
use crate::model::Outlier;
use crate::path;
use crate::report::Report;
use crate::validate::values;

/// `outlier = { consecutive_failures, base_ejection, max_ejection, gateway_errors }`; every
/// key is optional, the key itself too.
pub(super) fn outlier(f: Option<&OutlierFile>, at: &str, r: &mut Report<'_>) -> Outlier {
    let d = Outlier::default();
    let Some(f) = f else { return d };
    let consecutive_failures = f
        .consecutive_failures
        .and_then(|v| {
            r.check(
                &path::key(at, "consecutive_failures"),
                values::count_u32(v, 0).map_err(|e| format!("consecutive_failures {e}")),
            )
        })
        .unwrap_or(d.consecutive_failures);
    let base_at = path::key(at, "base_ejection");
    let base_ejection = duration(
        f.base_ejection.as_deref(),
        &base_at,
        d.base_ejection,
        true,
        r,
    );
    let max_at = path::key(at, "max_ejection");
    let max_ejection = match f.max_ejection.as_deref() {
        Some(s) => duration(Some(s), &max_at, d.max_ejection, true, r),
        // Unset: the default, or the base when that is longer.
        None => d.max_ejection.max(base_ejection),
    };
    if max_ejection < base_ejection {
        r.error(
            &max_at,
            format!(
                "max_ejection ({}) is shorter than base_ejection ({})",
                humantime::format_duration(max_ejection),
                humantime::format_duration(base_ejection)
            ),
        );
    }
    let gateway_errors = match &f.gateway_errors {
        Some(list) => statuses(list, &path::key(at, "gateway_errors"), r),
        None => d.gateway_errors,
    };
    Outlier {
        consecutive_failures,
        base_ejection,
        max_ejection,
        gateway_errors,
    }
}

/// `gateway_errors`: 5xx statuses, sorted and without duplicates.
fn statuses(list: &[i64], at: &str, r: &mut Report<'_>) -> Vec<u16> {
    let mut out: Vec<u16> = list
        .iter()
        .enumerate()
        .filter_map(|(k, &s)| {
            let ok = u16::try_from(s).ok().filter(|s| (500..=599).contains(s));
            if ok.is_none() {
                r.error(
                    &path::index(at, k),
                    format!("gateway error status must be a 5xx status (500-599), got {s}"),
                );
            }
            ok
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
