//! The pure decisions of ACME: which hostnames need a certificate, when one is due for
//! renewal, and how long to wait after a failure.

use crate::store::CertStore;
use anyedge_config::{Config, Handler};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every exact hostname (not a wildcard: TLS-ALPN-01 cannot prove one) of every app that has a
/// port with the `tls` handler, which no static certificate covers. Lower-case, sorted.
pub fn wanted_hostnames(config: &Config, store: &CertStore) -> BTreeSet<String> {
    let mut wanted = BTreeSet::new();
    for app in &config.apps {
        let terminates_tls = app
            .services
            .iter()
            .flat_map(|s| &s.ports)
            .any(|p| p.handlers.contains(&Handler::Tls));
        if !terminates_tls {
            continue;
        }
        for host in &app.hostnames {
            let host = crate::certs::normalize_name(host);
            if host.starts_with("*.") || store.get(&host).is_some() {
                continue;
            }
            wanted.insert(host);
        }
    }
    wanted
}

/// When a certificate valid from `not_before` to `not_after` (unix seconds) is renewed: when a
/// third of its lifetime is left.
pub fn renew_at(not_before: i64, not_after: i64) -> SystemTime {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    let at = not_after.saturating_sub(lifetime / 3);
    unix(at)
}

/// Unix seconds as a `SystemTime` (negative: the epoch).
pub fn unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Unix seconds of `t` (before the epoch: 0).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Exponential backoff after failed orders: `min`, doubling with each consecutive failure, at
/// most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th consecutive failure (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.min
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(60),
            max: Duration::from_secs(6 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_when_a_third_of_the_lifetime_is_left() {
        // 90 days from t=0: renewed at day 60.
        let day = 86_400;
        assert_eq!(renew_at(0, 90 * day), unix(60 * day));
        // 30 s certificate issued at t=1000: renewed at t=1020.
        assert_eq!(renew_at(1000, 1030), unix(1020));
        // Nonsense (notAfter before notBefore): renew at notAfter, never before it.
        assert_eq!(renew_at(2000, 1000), unix(1000));
    }

    #[test]
    fn backoff_doubles_from_min_up_to_max() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_secs(60));
        assert_eq!(b.delay(2), Duration::from_secs(120));
        assert_eq!(b.delay(3), Duration::from_secs(240));
        assert_eq!(b.delay(9), Duration::from_secs(60 * 256));
        assert_eq!(b.delay(10), Duration::from_secs(6 * 3600));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(6 * 3600));
        assert_eq!(b.delay(0), Duration::from_secs(60));
    }
}

#[cfg(test)]
mod wanted_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::certs::parse_key_pair;

    fn app(name: &str, hosts: &str, port: u16, handlers: &str) -> String {
        format!(
            "[[apps]]\nname = \"{name}\"\nhostnames = [{hosts}]\n  [[apps.services]]\n  ports = [ {{ port = {port}, handlers = [{handlers}] }} ]\n"
        )
    }

    #[test]
    fn exact_tls_hostnames_without_a_static_certificate() {
        let toml = [
            app(
                "a",
                "\"A.test\", \"*.wild.test\", \"static.test\"",
                443,
                "\"tls\", \"http\"",
            ),
            app("b", "\"plain.test\"", 80, "\"http\""),
            app("c", "\"c.test\"", 8443, "\"tls\""),
        ]
        .concat();
        let config = anyedge_config::parse(&toml, "t.toml").unwrap_or_else(|d| panic!("{d}"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["static.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pair = parse_key_pair(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        let mut store = CertStore::default();
        store.add(&pair, &[]);
        let wanted: Vec<String> = wanted_hostnames(&config, &store).into_iter().collect();
        assert_eq!(wanted, ["a.test", "c.test"]);
    }
}
