//! Backhaul, the edge's side: requests for instances that run on another node travel to that
//! node (the worker) over mutual TLS with the cluster CA. HTTP goes as streams on a few
//! long-lived HTTP/2 connections per worker ([`link`]), raw TCP on a TLS connection of its own
//! opened with a small binary header ([`tcp`]). Each worker streams its instances' load back
//! ([`feed`]). The worker's side is in `crate::worker` (and the feed's in [`feed`]).
//!
//! Stream metadata travels in one request header the worker removes, [`STREAM`]: the target app
//! and instance and the client (address, edge port, TLS, HTTP version), from which the worker
//! writes the forwarding headers (`X-Forwarded-*`, `P-Client-IP`, `P-Forwarded-Port`, `Via`);
//! the edge region and request id travel as the `P-Region` and `P-Request-Id` headers the
//! instance gets. A worker that cannot take a request answers 503 with
//! `RETRY_ELSEWHERE` (`crate::instance::headers`) before reading any of its body; the edge then places it again without
//! that instance.

pub(crate) mod feed;
pub(crate) mod link;
pub(crate) mod start;
pub(crate) mod streams;
pub(crate) mod tcp;

use crate::instance::headers::Forwarded;
use anyedge_backhaul::stream;
use anyedge_backhaul::tls::ClusterTls;
use anyedge_catalog::PeerEntry;
use arc_swap::ArcSwapOption;
use link::Link;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A backhaul stream's metadata, in one header (HPACK encodes and decodes every header of every
/// stream): `<app> <instance> <client ip> <edge port> <http|https> <1.1|2>`, the app, the
/// instance (its id within the app) and the client ([`Forwarded`]); [`FEED`] marks the
/// load-feed stream an edge opens on a backhaul connection.
pub(crate) use crate::instance::headers::{FEED, STREAM};

/// The edge's backhaul state: the cluster identity and one link per worker.
#[derive(Default)]
pub(crate) struct Backhaul {
    /// This node's cluster certificate and CA; `None` without `[cluster]`.
    pub tls: ArcSwapOption<ClusterTls>,
    /// Which `[cluster]` files `tls` came from, so a reload re-reads them only on change.
    loaded_from: Mutex<Option<anyedge_config::ClusterTls>>,
    links: Mutex<HashMap<Arc<str>, Arc<Link>>>,
    /// What each worker's load feed reported last, while the feed is open ([`feed::Reports`]).
    pub reports: feed::Reports,
    /// The tasks that ask workers to start their stopped instances ([`start`]).
    pub starts: start::RemoteStarts,
    /// Worker side: started when this node leaves the catalog (a graceful stop, before its
    /// lease is revoked): its load feeds end, so edges do not keep its instances by the grace
    /// rule for instances lost with a lease (`docs/cluster.md`).
    pub leaving: anyedge_core::Drain,
    /// Worker side: this node's load-feed frames, made once for every edge that follows them
    /// (started by the first).
    /// (version 1, version 2: `anyedge_backhaul::feed`, "Versions").
    pub frames: std::sync::OnceLock<tokio::sync::watch::Receiver<[bytes::Bytes; 2]>>,
}

impl Backhaul {
    /// Load the cluster certificates when the config names other ones than before. A file that
    /// cannot be read keeps what was loaded (logged).
    pub fn configure(&self, cluster: Option<&anyedge_config::ClusterTls>) {
        let mut from = self
            .loaded_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if from.as_ref() == cluster {
            return;
        }
        match cluster {
            None => self.tls.store(None),
            Some(c) => match ClusterTls::load(&c.ca, &c.cert, &c.key) {
                Ok(tls) => self.tls.store(Some(Arc::new(tls))),
                Err(e) => {
                    tracing::error!(error = %e, "cluster certificates not loaded; backhaul keeps what it had");
                    return;
                }
            },
        }
        *from = cluster.cloned();
    }

    /// The link to a peer, made on first use; a peer whose address changed gets a new one
    /// (requests already on the old one finish there).
    pub fn link(&self, peer: &PeerEntry) -> Arc<Link> {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = links
            .get(&peer.id)
            .filter(|l| l.advertise() == peer.advertise)
        {
            return l.clone();
        }
        let link = Arc::new(Link::new(peer));
        links.insert(peer.id.clone(), link.clone());
        link
    }

    /// Forget links to peers no snapshot names; their connections close once idle.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links.retain(|id, _| keep(id));
    }
}

/// An instance on another node, as an HTTP port sees it: the link to its worker and the start
/// of the [`STREAM`] header naming it, made once per snapshot instead of once per request.
pub(crate) struct Remote {
    pub link: Arc<Link>,
    /// `<app> <instance> `; `None` for names the header cannot carry (validation allows none).
    target: Option<stream::Target>,
}

impl Remote {
    pub fn new(link: Arc<Link>, app: &str, instance: &str) -> Remote {
        Remote {
            link,
            target: stream::Target::new(app, instance).ok(),
        }
    }

    /// Name the target of a request sent over backhaul, and its client.
    pub fn tag<B>(&self, req: &mut http::Request<B>, client: &Forwarded) {
        let Some(target) = &self.target else { return };
        // Names are visible ASCII (checked by `Target::new`): always a valid value.
        if let Ok(v) = http::HeaderValue::try_from(target.header(*client)) {
            req.headers_mut().insert(STREAM, v);
        }
    }
}

/// The host and port of an `advertise` value.
pub(crate) fn split_advertise(advertise: &str) -> Option<(String, u16)> {
    let hp = anyedge_config::rules::host_port(advertise).ok()?;
    Some((hp.host, hp.port?))
}
