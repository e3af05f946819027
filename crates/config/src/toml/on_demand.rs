//! Instances started on demand and stopped when idle: an app's `auto_start`, `auto_stop`,
//! `min_running`, `stop_after`, `start_timeout`, and an instance's `driver`
//! (`docs/on-demand.md`).

use super::file::{AppFile, DriverFile, MinRunningFile};
use super::sections::duration;
use crate::model::{AutoStop, Driver, MinRunning, OnDemand};
use crate::path;
use crate::report::Report;

/// The app's on-demand keys; every one is optional.
pub(super) fn keys(f: &AppFile, at: &str, r: &mut Report<'_>) -> OnDemand {
    let d = OnDemand::default();
    let auto_stop = match f.auto_stop.as_deref() {
        None | Some("off") => AutoStop::Off,
        Some("stop") => AutoStop::Stop,
        Some(other) => {
            r.error(
                &path::key(at, "auto_stop"),
                format!(
                    "unknown auto_stop `{other}` (known: {})",
                    quoted(&AutoStop::VALUES)
                ),
            );
            d.auto_stop
        }
    };
    let min_running = f
        .min_running
        .as_ref()
        .map(|m| min_running(m, &path::key(at, "min_running"), r))
        .unwrap_or_default();
    OnDemand {
        auto_start: f.auto_start.unwrap_or(d.auto_start),
        auto_stop,
        min_running,
        stop_after: duration(
            f.stop_after.as_deref(),
            &path::key(at, "stop_after"),
            d.stop_after,
            true,
            r,
        ),
        start_timeout: duration(
            f.start_timeout.as_deref(),
            &path::key(at, "start_timeout"),
            d.start_timeout,
            true,
            r,
        ),
    }
}

fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn min_running(f: &MinRunningFile, at: &str, r: &mut Report<'_>) -> MinRunning {
    let mut count = |v: Option<i64>, at: &str| {
        let v = v?;
        match u32::try_from(v) {
            Ok(n) => Some(n),
            Err(_) => {
                r.error(
                    at,
                    format!("must be a count from 0 to {}, got {v}", u32::MAX),
                );
                None
            }
        }
    };
    match f {
        MinRunningFile::Total(n) => MinRunning {
            total: count(Some(*n), at).unwrap_or(0),
            per_region: 0,
        },
        MinRunningFile::Table { total, per_region } => MinRunning {
            total: count(*total, &path::key(at, "total")).unwrap_or(0),
            per_region: count(*per_region, &path::key(at, "per_region")).unwrap_or(0),
        },
    }
}

/// An instance's `driver`.
pub(super) fn driver(f: &DriverFile, at: &str, r: &mut Report<'_>) -> Option<Driver> {
    let required = |v: &Option<String>, key: &str, r: &mut Report<'_>| match v {
        Some(s) if !s.trim().is_empty() => Some(s.clone()),
        Some(_) => {
            r.error(&path::key(at, key), format!("{key} must not be empty"));
            None
        }
        None => {
            r.error(
                at,
                format!("a \"{}\" driver needs `{key}`", f.kind.as_str()),
            );
            None
        }
    };
    let stray = |v: &Option<String>, key: &str, r: &mut Report<'_>| {
        if v.is_some() {
            r.key_error(
                &path::key(at, key),
                format!("a \"{}\" driver has no `{key}`", f.kind.as_str()),
            );
        }
    };
    match f.kind.as_str() {
        "command" => {
            stray(&f.url, "url", r);
            let start = required(&f.start, "start", r);
            let stop = required(&f.stop, "stop", r);
            Some(Driver::Command {
                start: start?,
                stop: stop?,
            })
        }
        "http" => {
            stray(&f.start, "start", r);
            stray(&f.stop, "stop", r);
            let url = required(&f.url, "url", r)?;
            let url_at = path::key(at, "url");
            r.check(&url_at, http_url(&url))?;
            Some(Driver::Http {
                url: url.trim_end_matches('/').to_string(),
            })
        }
        other => {
            r.error(
                &path::key(at, "type"),
                format!("unknown driver type `{other}` (known: \"command\", \"http\")"),
            );
            None
        }
    }
}

/// A machines API URL: `http://host[:port][/path]` (plain HTTP: the API is on the node's own
/// network or loopback), no query, no fragment.
fn http_url(url: &str) -> Result<(), String> {
    let bad = || format!("the machines API URL must be http://host[:port][/path], got {url:?}");
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty()
        || rest.contains(['?', '#'])
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    crate::validate::values::host_port(authority, false).map(|_| ())
}
