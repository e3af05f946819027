//! From a ClientHello's server name to a certificate: static exact, static wildcard, dynamic
//! (ACME), then an optional default.

use crate::certs::{normalize_name, wildcard_suffix};
use crate::store::CertStore;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Certificates added and removed at run time (ACME), shared by every snapshot's resolver.
/// Reads are lock-free; a write copies the map (writes are rare: one per issuance).
#[derive(Debug, Default)]
pub struct DynamicCerts {
    by_name: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl DynamicCerts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `key` for `hostname` (an exact name, or `*.example.com`) from now on.
    pub fn insert(&self, hostname: &str, key: Arc<CertifiedKey>) {
        let name = normalize_name(hostname);
        self.by_name.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(name.clone(), key.clone());
            map
        });
    }

    /// Stop serving `hostname`. Returns whether it was there.
    pub fn remove(&self, hostname: &str) -> bool {
        let name = normalize_name(hostname);
        let mut removed = false;
        self.by_name.rcu(|map| {
            let mut map = HashMap::clone(map);
            removed = map.remove(&name).is_some();
            map
        });
        removed
    }

    /// The certificate for `name` (lower-case): exact first, then a `*.` wildcard entry.
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.by_name.load();
        if let Some(key) = map.get(name) {
            return Some(key.clone());
        }
        let suffix = wildcard_suffix(name)?;
        map.get(&format!("*.{suffix}")).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_name.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The certificate resolver of one snapshot.
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<CertStore>,
    dynamic: Arc<DynamicCerts>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new(store: Arc<CertStore>, dynamic: Arc<DynamicCerts>) -> Self {
        SniResolver {
            store,
            dynamic,
            default: None,
        }
    }

    /// The certificate for clients that send no server name (IP-literal clients) or a name
    /// nothing else matches.
    pub fn with_default(mut self, default: Option<Arc<CertifiedKey>>) -> Self {
        self.default = default;
        self
    }

    /// The certificate a ClientHello naming `sni` gets; `None` means the handshake must fail.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|sni| {
            let name = normalized(sni);
            let name = name.as_ref();
            self.store
                .get(name)
                .cloned()
                .or_else(|| self.dynamic.get(name))
        });
        found.or_else(|| self.default.clone())
    }

    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    pub fn dynamic(&self) -> &Arc<DynamicCerts> {
        &self.dynamic
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(client_hello.server_name())
    }
}

/// `sni` as indexed, allocating only when it is not already (the usual case is lower-case).
fn normalized(sni: &str) -> Cow<'_, str> {
    match sni.ends_with('.') || sni.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(normalize_name(sni)),
        false => Cow::Borrowed(sni),
    }
}
