//! `anyedge certs list`: what a single node's ACME state directory holds, hostname by
//! hostname, beside what its config asks for.

use crate::cli::CertsListArgs;
use anyedge_tls::acme::{wanted_hostnames, CertInfo, StateDir, Status};
use anyedge_tls::rustls::pki_types::pem::PemObject;
use anyedge_tls::rustls::pki_types::CertificateDer;
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One line of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub hostname: String,
    pub state: String,
    pub issuer: String,
}

pub fn list(args: &CertsListArgs) -> ExitCode {
    let config = match anyedge_config::load(&args.config) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            return ExitCode::FAILURE;
        }
    };
    let Some(dir) = config.acme.state_dir.clone() else {
        eprintln!(
            "{}: [acme] state_dir is not set: this node does not issue certificates",
            args.config.display()
        );
        return ExitCode::FAILURE;
    };
    let (store, _) = anyedge_tls::CertStore::load(&config);
    let wanted = wanted_hostnames(&config, &store);
    match rows(&StateDir::new(&dir), &wanted, SystemTime::now()) {
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
        });
    }
    Ok(rows)
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
    let mut out = format!("{:width$}  {:state_width$}  ISSUER\n", "HOSTNAME", "STATE");
    for r in rows {
        out.push_str(&format!(
            "{:width$}  {:state_width$}  {}\n",
            r.hostname, r.state, r.issuer
        ));
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
    }
}
