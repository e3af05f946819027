//! The forwarding core's entry, called by our HTTP/1.1 and HTTP/2 servers for each request
//! (`for_request`, then `handle`). It never fails: every error becomes a response in
//! `error.rs`. Route by host, check the request, place it on an instance (carrying it to another
//! when a connection cannot be made), forward, and stream the response back.

use super::attempts::{Answer, Head, Hop, Job};
use super::routing::Wishes;
use crate::error::ProxyError;
use crate::instance::attempt::{set_host_from_authority, Outcome};
use crate::instance::body::{AccessRecord, ClientBody, ReqBody, RespBody};
use crate::instance::headers::{self, ClientInfo};
use crate::instance::http1::RawRequest;
use crate::instance::upgrade::{self, Upgrade};
use crate::routes::{HttpApp, HttpSettings, PortRoute, Routes};
use crate::Shared;
use http::header::{HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// One client connection's service. It holds no routes: every request is routed on the
/// snapshot current when its head arrives (`for_request`), so a kept-alive connection never reaches
/// an instance a reload removed, and an idle one pins no snapshot.
#[derive(Clone)]
pub(crate) struct ProxyService {
    pub(super) shared: Arc<Shared>,
    client: Arc<ClientInfo>,
    /// The node-wide HTTP settings: those of the snapshot current at accept on the
    /// connection's own copy (for the server's timeouts), the current ones on each request's.
    pub(super) settings: Arc<HttpSettings>,
    /// The TLS SNI of the connection, lower-cased.
    sni: Option<Arc<str>>,
    /// Answers go to our HTTP/1.1 server, which writes an instance's fields from the bytes
    /// received ([`crate::instance::http1::RawHead`]): no `HeaderMap` is built for them.
    pub(super) raw_answers: bool,
}

impl ProxyService {
    pub fn new(
        shared: Arc<Shared>,
        client: Arc<ClientInfo>,
        settings: Arc<HttpSettings>,
        sni: Option<Arc<str>>,
    ) -> Self {
        ProxyService {
            shared,
            client,
            settings,
            sni,
            raw_answers: false,
        }
    }

    /// This service answering our HTTP/1.1 server (see `raw_answers`).
    pub(in crate::front) fn answering_http1(mut self) -> Self {
        self.raw_answers = true;
        self
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// This request's service (with the HTTP settings current now) and its app, routed on the
    /// routes current now, for this request alone: the guard is dropped before any await, and
    /// the request keeps only its app.
    pub(in crate::front) fn for_request(
        &self,
        req: &Request<ClientBody>,
    ) -> (ProxyService, Result<Arc<HttpApp>, ProxyError>) {
        self.for_request_raw(req, None)
    }

    /// [`Self::for_request`] for a request whose fields are in `raw` (our HTTP/1.1 server's
    /// plain requests: `req` has no fields then).
    pub(in crate::front) fn for_request_raw(
        &self,
        req: &Request<ClientBody>,
        raw: Option<&RawRequest>,
    ) -> (ProxyService, Result<Arc<HttpApp>, ProxyError>) {
        let mut this = self.clone();
        let routes = self.shared.routes.load();
        this.settings = routes.http.clone();
        let routed = this.route(&routes, req, raw).cloned();
        (this, routed)
    }

    /// Answer one request (never fails: every error becomes a response in `error.rs`).
    ///
    /// What needs no waiting (routing's answer, the request's checks, its header edits) is
    /// done here, before the future exists; the future then holds the request once (in its
    /// `Job`), and the attempt loop borrows it. A plain function returning an `async` block:
    /// an `async fn` would keep its arguments beside what they become, and each layer of
    /// `async fn` copies the whole state below it once more when it is called.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub(in crate::front) fn handle(
        self,
        req: Request<ClientBody>,
        routed: Result<Arc<HttpApp>, ProxyError>,
    ) -> impl Future<Output = Response<RespBody>> + Send {
        self.handle_raw(req, None, routed)
    }

    /// [`Self::handle`] for a request whose fields may be in `raw` (see `for_request_raw`).
    #[allow(clippy::manual_async_fn)] // on purpose: see `handle`
    pub(in crate::front) fn handle_raw(
        self,
        req: Request<ClientBody>,
        raw: Option<RawRequest>,
        routed: Result<Arc<HttpApp>, ProxyError>,
    ) -> impl Future<Output = Response<RespBody>> + Send {
        let started = Instant::now();
        let request_id = headers::RequestId::new(&self.settings.region_name);
        let (app, mut prepared) = match routed {
            Ok(app) => {
                let prepared = self.prepare(&app, req, raw, &request_id, started);
                (Some(app), prepared)
            }
            Err(e) => (None, Prepared::Answer(Err((e, Outcome::default())))),
        };
        async move {
            let result = match prepared {
                Prepared::Answer(answer) => answer,
                Prepared::Run(ref mut job, ref mut hop) => {
                    let answer = self.run(job, hop).await;
                    // The request's state goes before its answer is sent on.
                    drop(prepared);
                    answer
                }
            };
            self.finish(app, result, request_id, started)
        }
    }

    /// The answer as the client gets it: an error mapped to its response, the request id,
    /// metrics and the access log.
    fn finish(
        &self,
        app: Option<Arc<HttpApp>>,
        result: Answer,
        request_id: headers::RequestId,
        started: Instant,
    ) -> Response<RespBody> {
        let (mut resp, outcome) = match result {
            Ok(ok) => ok,
            Err((e, mut outcome)) => {
                let code = e.code();
                outcome.code = Some(code.as_str());
                outcome.fault = Some(e.fault());
                match &app {
                    Some(app) => app.metrics.error(code),
                    None => self.shared.metrics.node.rejection(code),
                }
                tracing::debug!(code = code.as_str(), fault = e.fault().as_str(), error = %e, "request answered by the proxy");
                let mut resp = e.response(&self.settings.names);
                if let Some(route) = outcome.route.take() {
                    let names = &self.settings.names;
                    let value = super::routing::header_text(&route);
                    resp.headers_mut().insert(names.route.clone(), value);
                }
                (resp, outcome)
            }
        };
        if self.raw_answers {
            resp.body_mut().set_request_id(request_id);
        } else {
            resp.headers_mut().insert(
                self.settings.names.request_id.clone(),
                request_id.header_value(),
            );
        }
        let elapsed = started.elapsed();
        if let Some(app) = &app {
            app.metrics
                .http_response(resp.status().as_u16(), elapsed.as_secs_f64());
        }
        if self.settings.config.access_log {
            let status = resp.status().as_u16();
            let record = crate::in_pool(|| AccessRecord {
                request_id,
                app: app.as_ref().map(|a| a.app.name.clone()),
                outcome,
                status,
                first_byte: elapsed,
                started,
            });
            resp.body_mut().log_when_done(record);
        }
        resp
    }

    /// The app for this request's host in `routes`, with the checks that need only the request
    /// head. A port that no longer serves HTTP (a reload removed it while this connection
    /// stayed open) knows no host.
    fn route<'r>(
        &self,
        routes: &'r Routes,
        req: &Request<ClientBody>,
        raw: Option<&RawRequest>,
    ) -> Result<&'r Arc<HttpApp>, ProxyError> {
        let host_field = match raw {
            // Our HTTP/1.1 server refused a second `Host` already.
            Some(raw) => raw.host(),
            None => {
                // Two `Host` fields: an instance that reads the last one would see another
                // name than the one routed by (RFC 9112 3.2: a 400).
                let mut hosts = req.headers().get_all(HOST).iter();
                let host_field = hosts.next();
                if hosts.next().is_some() {
                    return Err(ProxyError::BadRequest("more than one Host header"));
                }
                host_field.and_then(|h| h.to_str().ok())
            }
        };
        let host = request_host(req, host_field).ok_or(ProxyError::MissingHost)?;
        let Some(PortRoute::Http(port)) = routes.port(self.client.local) else {
            return Err(ProxyError::UnknownHost);
        };
        let app = port.app(&host).ok_or(ProxyError::UnknownHost)?;
        if let Some(sni) = &self.sni {
            // A connection set up for one app may not carry another app's requests.
            let same = port.app(sni).is_some_and(|a| Arc::ptr_eq(&a.app, &app.app));
            if !same {
                return Err(ProxyError::Misdirected);
            }
        }
        Ok(app)
    }

    /// The request checked and edited for its instances, before any waiting: a `Job` and its
    /// first `Hop` (admission into the app's budget is the attempt loop's first step), or the
    /// answer when it goes no further.
    fn prepare(
        &self,
        app: &Arc<HttpApp>,
        mut req: Request<ClientBody>,
        mut raw: Option<RawRequest>,
        request_id: &headers::RequestId,
        started: Instant,
    ) -> Prepared {
        let mut outcome = Outcome::default();
        // The traffic policy first: a refused client costs no more than this.
        let ip = self.client.peer.ip();
        if let Err(refusal) = crate::policy::check(&app.app, app.service(), &app.metrics, ip) {
            outcome.route = self.refusal_trace(app, &req, raw.as_ref(), &refusal);
            return Prepared::Answer(Err((ProxyError::Refused(refusal), outcome)));
        }
        if app.service().force_https && !self.client.tls {
            if let Some(raw) = raw.take() {
                *req.uri_mut() = raw.uri();
                raw.fill(req.headers_mut(), &self.settings.names);
            }
            return Prepared::Answer(Ok((redirect_https(&req), outcome)));
        }
        let max_body = self.settings.config.max_request_body;
        let length = match &raw {
            Some(raw) => raw.content_length,
            None => headers::content_length(req.headers()),
        };
        if max_body > 0 && length.is_some_and(|n| n > max_body) {
            return Prepared::Answer(Err((ProxyError::BodyTooLarge { limit: max_body }, outcome)));
        }
        let upgrade = match upgrade::classify(&mut req) {
            Ok(u) => u,
            Err(why) => return Prepared::Answer(Err((ProxyError::BadRequest(why), outcome))),
        };
        let (mut parts, body) = req.into_parts();
        let names = &self.settings.names;
        let (wishes, debug_token) = Wishes::take_from(&mut parts.headers, names);
        let traced = debug_token.is_some_and(|t| app.app.config.accepts_token(t.as_bytes()));
        headers::strip_hop_by_hop(&mut parts.headers, matches!(upgrade, Upgrade::Http1 { .. }));
        // The client's forwarding headers wait for the instance: a worker writes them out.
        match raw.as_mut() {
            // Written after the received fields, with no `HeaderMap` (the fields a client may
            // not send are not among them: such a head is not kept).
            Some(raw) => raw.edge = Some((self.settings.region.clone(), *request_id)),
            None => {
                let id = request_id.header_value();
                headers::mark_edge(&mut parts.headers, names, &self.settings.region, &id)
            }
        }
        let forwarded = headers::forwarded(&self.client, parts.version);
        // The name routed by is the one the instance gets: an absolute-form target's (or
        // HTTP/2's :authority) authority replaces `Host` (RFC 9112 3.2.2).
        set_host_from_authority(&mut parts.headers, &parts.uri);
        let body = ReqBody::spilling(
            body,
            self.settings.config.replay_body_limit,
            max_body,
            app.metrics.clone(),
            self.shared.spill.get().copied(),
        );
        let queue_deadline = tokio::time::Instant::now() + app.app.config.limits.queue_timeout;
        let job = Job {
            head: Head::new(parts, raw),
            body,
            upgrade,
            started,
            trace: traced.then(String::new),
            outcome,
            app_slot: None,
            forwarded,
            fresh_only: false,
            last: None,
            retrying: None,
            replaying: None,
        };
        Prepared::Run(job, Hop::new(app.clone(), wishes, queue_deadline))
    }
}

impl ProxyService {
    /// The route trace of a request the traffic policy refused, when a valid debug token asked
    /// for it. Most requests carry no prefixed field, and then this is one pass over the names.
    #[allow(clippy::box_collection)] // `Outcome::route`'s thin box
    fn refusal_trace(
        &self,
        app: &HttpApp,
        req: &Request<ClientBody>,
        raw: Option<&RawRequest>,
        refusal: &crate::policy::Refusal,
    ) -> Option<Box<String>> {
        let names = &self.settings.names;
        let mut fields = match raw {
            Some(raw) if raw.prefixed(names.dash_prefix()) => {
                let mut map = http::HeaderMap::new();
                raw.fill(&mut map, names);
                map
            }
            Some(_) => return None,
            None if names.any_in(req.headers()) => req.headers().clone(),
            None => return None,
        };
        let (_, token) = Wishes::take_from(&mut fields, names);
        let traced = token.is_some_and(|t| app.app.config.accepts_token(t.as_bytes()));
        traced.then(|| Box::new(refusal.trace()))
    }
}

/// A request ready for its attempt loop, or its answer already.
#[allow(clippy::large_enum_variant)] // held in place by the request's future, never moved on
enum Prepared {
    Run(Job, Hop),
    Answer(Answer),
}

/// The request's host, lower-cased, without port: `:authority` (HTTP/2, absolute-form) or `Host`.
/// Borrowed unless it had to be lower-cased (no allocation on the common path).
fn request_host<'a>(
    req: &'a Request<ClientBody>,
    host_field: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => strip_port(host_field?),
    };
    let host = raw.trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(host))
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`; no port -> as is.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[..i].contains(':') || host[..i].ends_with(']') => {
            if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) {
                &host[..i]
            } else {
                host
            }
        }
        _ => host,
    }
}

/// `force_https`: 301 to the same host and path over HTTPS.
fn redirect_https(req: &Request<ClientBody>) -> Response<RespBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_string())
        })
        .unwrap_or_default();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = Uri::builder()
        .scheme("https")
        .authority(host.as_str())
        .path_and_query(path)
        .build();
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Some(v) = location
        .ok()
        .and_then(|u| HeaderValue::try_from(u.to_string()).ok())
    {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_come_off_host_headers() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("host:notaport"), "host:notaport");
    }
}
