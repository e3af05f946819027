//! Backhaul, the edge's side: requests for instances that run on another node travel to that
//! node (the worker) over mutual TLS with the cluster CA. HTTP goes as streams on a few
//! long-lived HTTP/2 connections per worker ([`link`]), raw TCP on a TLS connection of its own
//! opened with a small binary header ([`tcp`]). Each worker streams its instances' load back
//! ([`feed`]). The worker's side is in `crate::worker` (and the feed's in [`feed`]).
//!
//! Stream metadata travels as request headers the worker removes before forwarding:
//! [`APP`] and [`INSTANCE`] name the target; [`FORWARD`] carries the client (address, edge port,
//! TLS, HTTP version) in one header, from which the worker writes the forwarding headers
//! (`X-Forwarded-*`, `P-Client-IP`, `P-Forwarded-Port`, `Via`); the edge region and request id
//! travel as the `P-Region` and `P-Request-Id` headers the instance gets. A worker that cannot take a request answers 503 with
//! [`RETRY_ELSEWHERE`] before reading any of its body; the edge then places it again without
//! that instance.

pub(crate) mod feed;
pub(crate) mod link;
pub(crate) mod tcp;

use crate::http::headers::Forwarded;
use anyedge_backhaul::tls::ClusterTls;
use anyedge_catalog::PeerEntry;
use arc_swap::ArcSwapOption;
use http::HeaderName;
use link::Link;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The app a backhaul stream is for.
pub(crate) const APP: HeaderName = HeaderName::from_static("anyedge-backhaul-app");
/// The instance (its id within the app) a backhaul stream is for.
pub(crate) const INSTANCE: HeaderName = HeaderName::from_static("anyedge-backhaul-instance");
/// The client a backhaul stream is for, in one header ([`Forwarded::to_header`]): the worker
/// writes the forwarding headers (`X-Forwarded-*`, `<P>-Client-IP`, `Via`, ...) from it.
pub(crate) const FORWARD: HeaderName = HeaderName::from_static("anyedge-backhaul-forward");
/// Set on the worker's answer when the instance did not get the request: the reason.
pub(crate) const RETRY_ELSEWHERE: HeaderName = HeaderName::from_static("anyedge-retry-elsewhere");
/// Marks the load-feed stream an edge opens on a backhaul connection.
pub(crate) const FEED: HeaderName = HeaderName::from_static("anyedge-backhaul-feed");

/// The edge's backhaul state: the cluster identity and one link per worker.
#[derive(Default)]
pub(crate) struct Backhaul {
    /// This node's cluster certificate and CA; `None` without `[cluster]`.
    pub tls: ArcSwapOption<ClusterTls>,
    /// Which `[cluster]` files `tls` came from, so a reload re-reads them only on change.
    loaded_from: Mutex<Option<anyedge_config::ClusterTls>>,
    links: Mutex<HashMap<Arc<str>, Arc<Link>>>,
    /// Worker side: this node's load-feed frames, made once for every edge that follows them
    /// (started by the first).
    pub frames: std::sync::OnceLock<tokio::sync::watch::Receiver<bytes::Bytes>>,
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

/// An instance on another node, as an HTTP port sees it: the link to its worker and the stream
/// headers naming it, made once per snapshot instead of once per request.
pub(crate) struct Remote {
    pub link: Arc<Link>,
    /// [`APP`] and [`INSTANCE`]; `None` if a name is no valid header value (config validation
    /// keeps that from happening; the worker would refuse such a stream as `bad_request`).
    tag: Option<(http::HeaderValue, http::HeaderValue)>,
}

impl Remote {
    pub fn new(link: Arc<Link>, app: &str, instance: &str) -> Remote {
        let tag = http::HeaderValue::try_from(app)
            .ok()
            .zip(http::HeaderValue::try_from(instance).ok());
        Remote { link, tag }
    }

    /// Name the target of a request sent over backhaul, and its client ([`FORWARD`]).
    pub fn tag<B>(&self, req: &mut http::Request<B>, client: &Forwarded) {
        let h = req.headers_mut();
        if let Some((app, instance)) = &self.tag {
            h.insert(APP, app.clone());
            h.insert(INSTANCE, instance.clone());
        }
        h.insert(FORWARD, client.to_header());
    }
}

/// Whether a worker's refusal should put the instance into connect backoff here: every reason
/// but having no room right now. An instance the worker does not know (this edge's catalog is
/// stale), one that is unhealthy, or a worker that is draining would otherwise keep drawing
/// first attempts, since an instant refusal makes it look idle.
pub(crate) fn instance_failed(reason: &str) -> bool {
    !matches!(reason, "full" | "app_overloaded")
}

/// The host and port of an `advertise` value.
pub(crate) fn split_advertise(advertise: &str) -> Option<(String, u16)> {
    let hp = anyedge_config::rules::host_port(advertise).ok()?;
    Some((hp.host, hp.port?))
}
