//! The pure decisions of ACME: which hostnames need a certificate, when one is due for
//! renewal, and how long to wait after a failure.

use crate::store::CertStore;
use anyedge_config::{App, Config, Handler};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every exact hostname (not a wildcard: TLS-ALPN-01 cannot prove one) of every app that has a
/// port with the `tls` handler, which no static certificate covers. Lower-case, sorted.
pub fn wanted_hostnames(config: &Config, store: &CertStore) -> BTreeSet<String> {
    config
        .apps
        .iter()
        .flat_map(|app| app_hostnames(app, store))
        .collect()
}

/// What [`wanted_hostnames`] takes from one app.
fn app_hostnames(app: &App, store: &CertStore) -> Vec<String> {
    let terminates_tls = app
        .services
        .iter()
        .flat_map(|s| &s.ports)
        .any(|p| p.handlers.contains(&Handler::Tls));
    if !terminates_tls {
        return Vec::new();
    }
    app.hostnames
        .iter()
        .map(|host| crate::certs::normalize_name(host))
        .filter(|host| !host.starts_with("*.") && store.get(host).is_none())
        .collect()
}

/// [`wanted_hostnames`] kept by app, so that a change of the catalog updates it by the apps it
/// changed (at 100,000 apps the walk over every app was a tenth of an etcd change's CPU).
#[derive(Debug, Default)]
pub struct WantedHostnames {
    by_app: HashMap<String, Vec<String>>,
    /// How many apps want each hostname (the claims across apps keep it at one).
    count: BTreeMap<String, usize>,
    /// The static certificates the apps were judged against.
    store: Arc<CertStore>,
}

impl WantedHostnames {
    /// Every app of `config`, judged against `store`.
    pub fn of(config: &Config, store: Arc<CertStore>) -> WantedHostnames {
        let mut wanted = WantedHostnames {
            store,
            ..WantedHostnames::default()
        };
        for app in &config.apps {
            wanted.set_app(&app.name, Some(app));
        }
        wanted
    }

    /// Whether the apps were judged against these static certificates (the same, or both
    /// empty): only then can they be updated app by app.
    pub fn judged_on(&self, store: &Arc<CertStore>) -> bool {
        Arc::ptr_eq(&self.store, store) || (self.store.is_empty() && store.is_empty())
    }

    /// App `name` is now `app` (`None`: gone); returns whether the hostnames wanted changed.
    pub fn set_app(&mut self, name: &str, app: Option<&App>) -> bool {
        let new = app.map_or_else(Vec::new, |a| app_hostnames(a, &self.store));
        let old = match new.is_empty() {
            true => self.by_app.remove(name).unwrap_or_default(),
            false => self
                .by_app
                .insert(name.to_string(), new.clone())
                .unwrap_or_default(),
        };
        if old == new {
            return false;
        }
        let mut changed = false;
        for host in old {
            if let Some(n) = self.count.get_mut(&host) {
                *n -= 1;
                if *n == 0 {
                    self.count.remove(&host);
                    changed = true;
                }
            }
        }
        for host in new {
            let n = self.count.entry(host).or_default();
            changed |= *n == 0;
            *n += 1;
        }
        changed
    }

    pub fn hostnames(&self) -> BTreeSet<String> {
        self.count.keys().cloned().collect()
    }
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

    /// Updated app by app over a seeded walk (apps come, go, gain and lose the `tls` handler,
    /// change hostnames, a static certificate covers one), the hostnames are those taken from
    /// every app, and a change is reported exactly when they changed.
    #[test]
    fn wanted_by_the_apps_changed_is_wanted_from_every_app() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["h3.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pair = parse_key_pair(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        let mut store = CertStore::default();
        store.add(&pair, &[]);
        let store = Arc::new(store);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut apps: BTreeMap<String, String> = BTreeMap::new();
        let config_of = |apps: &BTreeMap<String, String>| {
            let text: String = apps.values().cloned().collect();
            anyedge_config::parse(&text, "t.toml").unwrap_or_else(|d| panic!("{d}"))
        };
        let mut wanted = WantedHostnames::of(&config_of(&apps), store.clone());
        assert!(wanted.judged_on(&store) && !wanted.judged_on(&Arc::default()));
        for step in 0..400 {
            let name = format!("a{}", rand(12));
            let before = wanted.hostnames();
            match rand(4) {
                0 => drop(apps.remove(&name)),
                _ => {
                    // Hostnames unique to the app (the claims across apps), one of them
                    // possibly covered by the static certificate.
                    let hosts = format!("\"{name}-{}.test\", \"h{}.test\"", rand(3), &name[1..]);
                    let (port, handlers) =
                        [(443, "\"tls\", \"http\""), (80, "\"http\"")][rand(2) as usize];
                    apps.insert(name.clone(), app(&name, &hosts, port, handlers));
                }
            }
            let config = config_of(&apps);
            let now = config.apps.iter().find(|a| a.name == name);
            let changed = wanted.set_app(&name, now.map(|a| &**a));
            let afresh = wanted_hostnames(&config, &store);
            assert_eq!(wanted.hostnames(), afresh, "step {step}");
            assert_eq!(changed, before != afresh, "step {step}");
        }
    }
}
