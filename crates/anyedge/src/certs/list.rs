//! `anyedge certs list`: what a single node's ACME state directory (or, with `--etcd`, the
//! cluster catalog) holds, hostname by hostname, beside what the config asks for; in a
//! cluster, also which node holds a hostname's issuance lock.

use crate::cli::{CertsListArgs, EtcdArgs};
use anyedge_store::acme::{list_hosts, HostListing};
use anyedge_tls::acme::{wanted_hostnames, CertInfo, StateDir, Status};
use anyedge_tls::rustls::pki_types::pem::PemObject;
use anyedge_tls::rustls::pki_types::CertificateDer;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One line of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub hostname: String,
    pub state: String,
    pub issuer: String,
    /// The node holding the issuance lock (cluster only).
    pub lock: Option<String>,
}

const DEFAULT_CONFIG: &str = "/etc/anyedge/anyedge.toml";

pub fn list(args: &CertsListArgs) -> ExitCode {
    let config_path = match (&args.config, &args.etcd) {
        (Some(path), _) => Some(path.clone()),
        (None, None) => Some(PathBuf::from(DEFAULT_CONFIG)),
        (None, Some(_)) => None,
    };
    let config = match config_path.as_deref().map(anyedge_config::load).transpose() {
        Ok(c) => c,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            return ExitCode::FAILURE;
        }
    };
    let wanted = config.as_ref().map_or_else(BTreeSet::new, |config| {
        let (store, _) = anyedge_tls::CertStore::load(config);
        wanted_hostnames(config, &store)
    });
    if let Some(etcd) = &args.etcd {
        // TLS to etcd as the node's own [catalog] says, when a config is given.
        let tls = match config.as_ref().map(|c| &c.catalog) {
            Some(anyedge_config::CatalogConfig::Etcd(e)) => {
                (e.ca.clone(), e.cert.clone(), e.key.clone())
            }
            _ => (None, None, None),
        };
        let etcd = EtcdArgs {
            etcd: etcd.clone(),
            etcd_ca: tls.0,
            etcd_cert: tls.1,
            etcd_key: tls.2,
        };
        return crate::manage::run(&etcd, |mut client| async move {
            let keys = anyedge_store::Keys::default();
            let listing = list_hosts(&mut client, &keys)
                .await
                .map_err(crate::manage::CmdError::Etcd)?;
            print!(
                "{}",
                render(&etcd_rows(&listing, &wanted, SystemTime::now()))
            );
            Ok(())
        });
    }
    let (Some(config), Some(path)) = (config, config_path) else {
        return ExitCode::FAILURE;
    };
    state_dir_list(&config, &path, &wanted)
}

fn state_dir_list(
    config: &anyedge_config::Config,
    path: &Path,
    wanted: &BTreeSet<String>,
) -> ExitCode {
    let Some(dir) = config.acme.state_dir.clone() else {
        eprintln!(
            "{}: [acme] state_dir is not set: this node does not issue certificates (a cluster: --etcd URL)",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    match rows(&StateDir::new(&dir), wanted, SystemTime::now()) {
        Ok(rows) => {
            print!("{}", render(&rows));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot read {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Every hostname the config wants or the state directory holds.
pub fn rows(
    state: &StateDir,
    wanted: &BTreeSet<String>,
    now: SystemTime,
) -> std::io::Result<Vec<Row>> {
    let mut names: BTreeSet<String> = state.hostnames()?.into_iter().collect();
    names.extend(wanted.iter().cloned());
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        let info = state
            .read_cert(&name)?
            .and_then(|c| CertificateDer::pem_slice_iter(c.chain_pem.as_bytes()).next())
            .and_then(Result::ok)
            .and_then(|der| CertInfo::of(der.as_ref()).ok());
        let status = state.read_status(&name).ok().flatten();
        let mut text = describe(info.as_ref(), status.as_ref(), now);
        if !wanted.contains(&name) {
            text.push_str(" (not in the config: not served)");
        }
        rows.push(Row {
            hostname: name,
            state: text,
            issuer: info.map_or_else(|| "-".to_string(), |i| i.issuer),
            lock: None,
        });
    }
    Ok(rows)
}

/// Every hostname the config wants or the catalog holds, with its lock holder.
pub fn etcd_rows(
    listing: &BTreeMap<String, HostListing>,
    wanted: &BTreeSet<String>,
    now: SystemTime,
) -> Vec<Row> {
    let mut names: BTreeSet<&String> = listing.keys().collect();
    names.extend(wanted.iter());
    names
        .into_iter()
        .map(|name| {
            let host = listing.get(name).cloned().unwrap_or_default();
            let info = host
                .chain_pem
                .as_deref()
                .and_then(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()).next())
                .and_then(Result::ok)
                .and_then(|der| CertInfo::of(der.as_ref()).ok());
            let mut state = describe(info.as_ref(), host.status.as_ref(), now);
            if !wanted.is_empty() && !wanted.contains(name) {
                state.push_str(" (not in the config)");
            }
            Row {
                hostname: name.clone(),
                state,
                issuer: info.map_or_else(|| "-".to_string(), |i| i.issuer),
                lock: Some(host.lock_holder.unwrap_or_else(|| "-".to_string())),
            }
        })
        .collect()
}

fn describe(info: Option<&CertInfo>, status: Option<&Status>, now: SystemTime) -> String {
    let held = info.map(|i| match at(i.not_after) > now {
        true => format!("valid until {}", date(i.not_after)),
        false => format!("expired at {}", date(i.not_after)),
    });
    match (status, held) {
        (
            Some(Status::Failing {
                error,
                failures,
                next_attempt,
                ..
            }),
            held,
        ) => {
            let serving = held
                .map(|h| format!("; serving the old one, {h}"))
                .unwrap_or_default();
            format!(
                "failing: {error} ({failures} attempt(s), next at {}){serving}",
                date(*next_attempt)
            )
        }
        (Some(Status::Pending { since }), None) => format!("pending since {}", date(*since)),
        (_, Some(held)) => held,
        (_, None) => "pending".to_string(),
    }
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn date(secs: i64) -> String {
    humantime::format_rfc3339_seconds(at(secs)).to_string()
}

fn render(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.hostname.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let state_width = rows.iter().map(|r| r.state.len()).max().unwrap_or(0).max(5);
    let locks = rows.iter().any(|r| r.lock.is_some());
    let lock_width = rows
        .iter()
        .filter_map(|r| r.lock.as_ref().map(String::len))
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!("{:width$}  {:state_width$}  ", "HOSTNAME", "STATE");
    if locks {
        out.push_str(&format!("{:lock_width$}  ", "LOCK"));
    }
    out.push_str("ISSUER\n");
    for r in rows {
        out.push_str(&format!(
            "{:width$}  {:state_width$}  ",
            r.hostname, r.state
        ));
        if let Some(lock) = &r.lock {
            out.push_str(&format!("{lock:lock_width$}  "));
        }
        out.push_str(&format!("{}\n", r.issuer));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use anyedge_tls::acme::StoredCert;

    #[test]
    fn states_read_from_the_state_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let stored = StoredCert {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        state.write_cert("a.test", &stored).unwrap();
        state.write_cert("gone.test", &stored).unwrap();
        let failing = Status::Failing {
            error: "connection refused".into(),
            failures: 2,
            next_attempt: 0,
            not_after: None,
        };
        state.write_status("b.test", &failing).unwrap();
        let wanted: BTreeSet<String> = ["a.test", "b.test", "c.test"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows = rows(&state, &wanted, SystemTime::now()).unwrap();
        let states: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.hostname.as_str(), r.state.as_str()))
            .collect();
        assert_eq!(states.len(), 4);
        assert!(states[0].1.starts_with("valid until "), "{states:?}");
        assert!(
            states[1].1.starts_with(
                "failing: connection refused (2 attempt(s), next at 1970-01-01T00:00:00Z)"
            ),
            "{states:?}"
        );
        assert_eq!(states[2], ("c.test", "pending"));
        assert!(
            states[3].1.ends_with("(not in the config: not served)"),
            "{states:?}"
        );
        assert!(rows[0].issuer.contains("rcgen"), "{}", rows[0].issuer);
        assert!(render(&rows).starts_with("HOSTNAME"));
        assert!(!render(&rows).contains("LOCK"));
    }

    #[test]
    fn the_catalog_listing_names_the_lock_holder() {
        let mut listing = BTreeMap::new();
        listing.insert(
            "a.test".to_string(),
            HostListing {
                chain_pem: None,
                status: Some(Status::Pending { since: 0 }),
                lock_holder: Some("edge-b".to_string()),
            },
        );
        let wanted: BTreeSet<String> = ["a.test", "b.test"].iter().map(|s| s.to_string()).collect();
        let rows = etcd_rows(&listing, &wanted, SystemTime::now());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].state, "pending since 1970-01-01T00:00:00Z");
        assert_eq!(rows[0].lock.as_deref(), Some("edge-b"));
        assert_eq!(rows[1].lock.as_deref(), Some("-"));
        let text = render(&rows);
        assert!(text.lines().next().unwrap().contains("LOCK"), "{text}");
        assert!(text.lines().nth(1).unwrap().contains("edge-b"), "{text}");
    }
}
