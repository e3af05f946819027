//! The static certificates of a config (every app's `[[apps.certificates]]`), indexed by the
//! names they serve: exact names, and `*.` wildcards keyed by the suffix they cover.

use crate::certs::{load_key_pair, wildcard_suffix, KeyPairError, ParsedKeyPair};
use anyedge_config::{App, CertificateFiles, Config};
use rustls::sign::CertifiedKey;
use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A certificate of an app that could not be loaded; it is skipped, the others serve.
#[derive(Debug, thiserror::Error)]
#[error("app {app}: certificate {} (key {}): {problem}", cert.display(), key.display())]
pub struct CertError {
    pub app: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub problem: KeyPairError,
}

/// Why a name points at a certificate. When two certificates claim a name, a certificate an
/// app configured for one of its own hostnames beats one that merely lists the name; between
/// equals, the one that expires later wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    /// The name is in the certificate's subjectAltName.
    Listed,
    /// The name is also a hostname of the app that configured the certificate.
    OwnHostname,
}

#[derive(Debug, Clone)]
struct Entry {
    key: Arc<CertifiedKey>,
    not_after: i64,
    claim: Claim,
}

/// Static certificates by name. Immutable once loaded; rebuilt with each config snapshot.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Entry>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Entry>,
}

impl CertStore {
    /// Load every app's certificates. A pair that fails to load (unreadable file, bad PEM, key
    /// not matching the certificate...) is returned as an error with its paths and skipped.
    /// Blocking file I/O: call it where blocking is fine (startup, a reload task).
    pub fn load(config: &Config) -> (CertStore, Vec<CertError>) {
        let mut store = CertStore::default();
        let mut errors = Vec::new();
        for app in &config.apps {
            for files in &app.certificates {
                let loaded = load_key_pair(&files.cert, &files.key).and_then(|pair| {
                    match pair.dns_names.is_empty() {
                        true => Err(KeyPairError::NoDnsNames),
                        false => Ok(pair),
                    }
                });
                match loaded {
                    Ok(pair) => {
                        warn_if_expired(app, files, pair.not_after);
                        store.add(&pair, &app.hostnames);
                    }
                    Err(problem) => errors.push(cert_error(app, files, problem)),
                }
            }
        }
        tracing::debug!(
            names = store.exact.len() + store.wildcard.len(),
            errors = errors.len(),
            "static certificates loaded"
        );
        (store, errors)
    }

    /// Index a certificate by the DNS names it lists and by those of `own_hostnames` (the
    /// hostnames of the app that configured it, lower-cased) that it covers.
    pub fn add(&mut self, pair: &ParsedKeyPair, own_hostnames: &[String]) {
        for name in &pair.dns_names {
            self.claim(name, pair, Claim::Listed);
        }
        for host in own_hostnames {
            if covers(&pair.dns_names, host) {
                self.claim(host, pair, Claim::OwnHostname);
            }
        }
    }

    fn claim(&mut self, name: &str, pair: &ParsedKeyPair, claim: Claim) {
        let (map, key) = match name.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, name),
        };
        let entry = Entry {
            key: pair.key.clone(),
            not_after: pair.not_after,
            claim,
        };
        match map.entry(key.to_owned()) {
            MapEntry::Vacant(slot) => {
                slot.insert(entry);
            }
            MapEntry::Occupied(mut slot) => {
                let held = slot.get();
                if (entry.claim, entry.not_after) > (held.claim, held.not_after) {
                    slot.insert(entry);
                }
            }
        }
    }

    /// The certificate for `name` (lower-case, no trailing dot): an exact name first, then a
    /// wildcard covering its first label.
    pub fn get(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact
            .get(name)
            .or_else(|| self.wildcard.get(wildcard_suffix(name)?))
            .map(|entry| &entry.key)
    }

    /// Every name served, with the notAfter (unix seconds) of the certificate serving it;
    /// wildcards as `*.example.com`. Sorted by name. For `anyedge_cert_expiry_timestamp_seconds`.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let exact = self
            .exact
            .iter()
            .map(|(name, e)| (name.clone(), e.not_after));
        let wildcard = self
            .wildcard
            .iter()
            .map(|(suffix, e)| (format!("*.{suffix}"), e.not_after));
        let mut all: Vec<_> = exact.chain(wildcard).collect();
        all.sort();
        all
    }

    /// How many names (exact and wildcard) have a certificate.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An expired certificate still serves (the client then says why it refuses, which beats an
/// unknown name), but the operator hears of it at every load.
fn warn_if_expired(app: &App, files: &CertificateFiles, not_after: i64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if not_after < now {
        tracing::warn!(
            app = %app.name,
            cert = %files.cert.display(),
            not_after,
            "certificate has expired; serving it anyway"
        );
    }
}

fn cert_error(app: &App, files: &CertificateFiles, problem: KeyPairError) -> CertError {
    CertError {
        app: app.name.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
        problem,
    }
}

/// Whether a certificate listing `dns_names` is valid for `host` (itself possibly `*.x`).
fn covers(dns_names: &[String], host: &str) -> bool {
    dns_names.iter().any(|name| {
        name == host
            || name
                .strip_prefix("*.")
                .is_some_and(|suffix| wildcard_suffix(host) == Some(suffix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let names = vec!["*.example.com".to_string()];
        assert!(covers(&names, "a.example.com"));
        assert!(covers(&names, "*.example.com"));
        assert!(!covers(&names, "example.com"));
        assert!(!covers(&names, "a.b.example.com"));
        assert!(!covers(&names, ".example.com"));
    }
}
