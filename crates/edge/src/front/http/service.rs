//! The service hyper calls for each request. It never fails: every error becomes a response in
//! `error.rs`. Route by host, check the request, place it on an instance (carrying it to another
//! when a connection cannot be made), forward, and stream the response back.

use super::carrier::{body_too_large, retry_reason, Carrier, CarryError};
use super::routing::{self, Fallback, Replay, Resolved, Wishes};
use crate::admit::{self, AdmitError};
use crate::backhaul;
use crate::error::ProxyError;
use crate::instance::attempt::{upstream_uri, Outcome};
use crate::instance::body::{ReqBody, RespBody, Slots};
use crate::instance::headers::{self, ClientInfo, Forwarded};
use crate::instance::pool::{Sender, Target, UpstreamError};
use crate::instance::upgrade::{self, Leg, Upgrade};
use crate::routes::{HttpApp, HttpSettings, PortRoute, Routes};
use crate::Shared;
use anyedge_telemetry::RetryReason;
use http::header::{CONTENT_LENGTH, HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// One client connection's service. It holds no routes: every request is routed on the
/// snapshot current when its head arrives (`call`), so a kept-alive connection never reaches
/// an instance a reload removed, and an idle one pins no snapshot.
#[derive(Clone)]
pub(crate) struct ProxyService {
    shared: Arc<Shared>,
    client: Arc<ClientInfo>,
    /// The node-wide HTTP settings: those of the snapshot current at accept on the
    /// connection's own copy (for the server's timeouts), the current ones on each request's.
    settings: Arc<HttpSettings>,
    /// The TLS SNI of the connection, lower-cased.
    sni: Option<Arc<str>>,
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut this = self.clone();
        // The routes current now, for this request alone: the guard is dropped before any
        // await, and the request keeps only its app.
        let routed = {
            let routes = self.shared.routes.load();
            this.settings = routes.http.clone();
            this.route(&routes, &req).cloned()
        };
        Box::pin(async move { Ok(this.handle(req, routed).await) })
    }
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
        }
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        routed: Result<Arc<HttpApp>, ProxyError>,
    ) -> Response<RespBody> {
        let started = Instant::now();
        let request_id = headers::request_id(&self.settings.region_name);
        let (app, result) = match routed {
            Ok(app) => {
                let result = self.proxy(&app, req, &request_id, started).await;
                (Some(app), result)
            }
            Err(e) => (None, Err((e, Outcome::default()))),
        };
        let (mut resp, outcome) = match result {
            Ok(ok) => ok,
            Err((e, mut outcome)) => {
                let code = e.code();
                outcome.code = Some(code.as_str());
                match &app {
                    Some(app) => app.metrics.error(code),
                    None => self.shared.metrics.node.rejection(code),
                }
                tracing::debug!(code = code.as_str(), error = %e, "request answered by the proxy");
                (e.response(&self.settings.names), outcome)
            }
        };
        resp.headers_mut()
            .insert(self.settings.names.request_id.clone(), request_id.clone());
        let elapsed = started.elapsed();
        if let Some(app) = &app {
            app.metrics
                .http_response(resp.status().as_u16(), elapsed.as_secs_f64());
        }
        if self.settings.config.access_log {
            let app_name = app.as_ref().map(|a| a.app.name.clone());
            let status = resp.status().as_u16();
            resp.body_mut().on_done(Box::new(move |bytes_out| {
                tracing::info!(
                    target: "anyedge::access",
                    request_id = request_id.to_str().unwrap_or(""),
                    app = app_name.as_deref().unwrap_or(""),
                    instance = outcome.instance.as_ref().map_or("", |i| i.instance()),
                    status,
                    code = outcome.code.unwrap_or(""),
                    attempts = outcome.attempts,
                    replays = outcome.replays,
                    bytes_out,
                    queue_ms = outcome.queue.as_secs_f64() * 1e3,
                    connect_ms = outcome.connect.as_secs_f64() * 1e3,
                    first_byte_ms = elapsed.as_secs_f64() * 1e3,
                    total_ms = started.elapsed().as_secs_f64() * 1e3,
                );
            }));
        }
        resp
    }

    /// The app for this request's host in `routes`, with the checks that need only the request
    /// head. A port that no longer serves HTTP (a reload removed it while this connection
    /// stayed open) knows no host.
    fn route<'r>(
        &self,
        routes: &'r Routes,
        req: &Request<Incoming>,
    ) -> Result<&'r Arc<HttpApp>, ProxyError> {
        let host = request_host(req).ok_or(ProxyError::MissingHost)?;
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

    async fn proxy(
        &self,
        app: &Arc<HttpApp>,
        mut req: Request<Incoming>,
        request_id: &HeaderValue,
        started: Instant,
    ) -> Result<(Response<RespBody>, Outcome), (ProxyError, Outcome)> {
        let outcome = Outcome::default();
        if app.service().force_https && !self.client.tls {
            return Ok((redirect_https(&req), outcome));
        }
        let max_body = self.settings.config.max_request_body;
        if max_body > 0 && content_length(&req).is_some_and(|n| n > max_body) {
            return Err((ProxyError::BodyTooLarge { limit: max_body }, outcome));
        }
        let upgrade = match upgrade::classify(&mut req) {
            Ok(u) => u,
            Err(e) => return Err((e, outcome)),
        };
        let (mut parts, body) = req.into_parts();
        let names = &self.settings.names;
        let (wishes, debug_token) = Wishes::take_from(&mut parts.headers, names);
        let traced = debug_token.is_some_and(|t| app.app.config.accepts_token(t.as_bytes()));
        headers::strip_hop_by_hop(&mut parts.headers, matches!(upgrade, Upgrade::Http1 { .. }));
        // The client's forwarding headers wait for the instance: a worker writes them out.
        headers::mark_edge(&mut parts.headers, names, &self.settings.region, request_id);
        let forwarded = Forwarded::new(&self.client, parts.version);
        if !parts.headers.contains_key(HOST) {
            if let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
            {
                parts.headers.insert(HOST, v);
            }
        }
        let body = ReqBody::new(
            body,
            self.settings.config.replay_body_limit,
            max_body,
            app.metrics.clone(),
        );
        let queue_deadline = tokio::time::Instant::now() + app.app.config.limits.queue_timeout;
        let app_slot = match admit::admit_app(&app.app, queue_deadline, &app.metrics).await {
            Ok(s) => s,
            Err(e) => return Err((ProxyError::Admit(e), outcome)),
        };
        let job = Job {
            head: Head::from(parts),
            body,
            upgrade,
            started,
            trace: traced.then(String::new),
            outcome,
            app_slot,
            forwarded,
        };
        self.run(job, Hop::new(app.clone(), wishes, queue_deadline))
            .await
    }

    /// Place, connect, send; retry where it is safe, replay where the instance asks.
    async fn run(
        &self,
        mut job: Job,
        mut hop: Hop,
    ) -> Result<(Response<RespBody>, Outcome), (ProxyError, Outcome)> {
        let config = &self.settings.config;
        let names = &self.settings.names;
        let retry_until = job.started + config.retry_deadline;
        let mut fresh_only = false;
        let mut last_error: Option<String> = None;
        // Why the next attempt is a retry; counted when that attempt is made.
        let mut retrying: Option<RetryReason> = None;
        // The replay in progress: who asked, and whether its fallback was used.
        let mut replaying: Option<ReplayFrom> = None;
        loop {
            let over_budget = job.outcome.attempts >= config.max_attempts + job.outcome.replays
                || Instant::now() >= retry_until;
            let placed = if over_budget {
                Err(AdmitError::Unavailable)
            } else {
                admit::place(
                    &hop.app.app,
                    &hop.resolved.constraints(),
                    &hop.tried,
                    hop.deadline,
                    &hop.app.metrics,
                    job.trace.as_mut(),
                )
                .await
            };
            if job.outcome.attempts == 0 {
                job.outcome.queue = job.started.elapsed();
            }
            let placed = match placed {
                Ok(p) => p,
                Err(e) => {
                    // A replay that cannot be carried out goes back to its instance when it
                    // asked for that.
                    if let Some(from) = replaying.as_mut().filter(|f| f.fallback.is_some()) {
                        let Some(mode) = from.fallback.take() else {
                            unreachable!("filtered on is_some")
                        };
                        hop = self.fallback(&mut job, from, mode, &e.to_string());
                        retrying = None;
                        continue;
                    }
                    let err = match (e, last_error.take()) {
                        (_, Some(last)) if over_budget || e == AdmitError::Unavailable => {
                            ProxyError::NoInstance(last)
                        }
                        _ if replaying.is_some() => ProxyError::ReplayFailed(e.to_string()),
                        _ => ProxyError::Admit(e),
                    };
                    return Err((err, job.outcome));
                }
            };
            if let Some(reason) = retrying.take() {
                hop.app.metrics.retry(reason);
            }
            let app = hop.app.clone();
            hop.tried[placed.index] = true;
            job.outcome.attempts += 1;
            let inst = &app.app.instances[placed.index];
            let service = app.service();
            let Some(port) = inst.address.port.or(service.internal_port) else {
                continue;
            };
            // An instance on another node: over backhaul (HTTP/2) to its worker.
            let remote = app.remotes[placed.index].as_ref();
            let link = remote.map(|r| &r.link);
            let h2 = link.is_some()
                || (service.http_options.h2_backend && matches!(job.upgrade, Upgrade::None));
            let target = Target {
                host: &inst.address.host,
                port,
                h2,
                connect_timeout: self.shared.routes.load().limits.connect_timeout,
                idle_timeout: config.upstream_idle_timeout,
            };
            let pool = &app.pools[placed.index];
            let connecting = Instant::now();
            let sender = if let Some(link) = link {
                let timeout = target.connect_timeout;
                if matches!(job.upgrade, Upgrade::None) {
                    link.sender(&self.shared, timeout)
                        .await
                        .map(Carrier::Stream)
                } else {
                    // Boxed: upgrades are rare (see below).
                    let opening = Box::pin(link.upgrade_sender(&self.shared, timeout));
                    opening.await.map(|s| Carrier::Hyper(Sender::H2(s)))
                }
            } else if fresh_only || !matches!(job.upgrade, Upgrade::None) {
                pool.fresh(&target, &self.shared.resolver)
                    .await
                    .map(Carrier::Hyper)
            } else {
                pool.sender(&target, &self.shared.resolver)
                    .await
                    .map(Carrier::Hyper)
            };
            job.outcome.connect += connecting.elapsed();
            fresh_only = false;
            let sender = match sender {
                Ok(s) => s,
                Err(e) => {
                    inst.live.connect_failed(Instant::now());
                    if let UpstreamError::Connect(a) = &e {
                        app.metrics.connect_failure(a.reason());
                    }
                    tracing::info!(instance = %inst.id, error = %e, "instance unreachable; trying another");
                    retrying = Some(RetryReason::Connect);
                    last_error = Some(e.to_string());
                    continue;
                }
            };
            inst.live.connect_succeeded();
            job.outcome.instance = Some(inst.id.clone());
            // Every attempt sends a copy (the first reads the client's body as it goes); older
            // copies stop, so a replayed instance still reading cannot steal the body.
            let Some(body) = job.body.next_attempt() else {
                let why = "the request body is larger than replay_body_limit".to_string();
                let err = if replaying.is_some() {
                    ProxyError::ReplayFailed(why)
                } else {
                    ProxyError::Upstream(why)
                };
                return Err((err, job.outcome));
            };
            let mut request = job.head.request(body, h2);
            match remote {
                Some(remote) => remote.tag(&mut request, &job.forwarded),
                None => headers::add_client(request.headers_mut(), names, &job.forwarded),
            }
            if !matches!(job.upgrade, Upgrade::None) {
                let upgrade = std::mem::replace(&mut job.upgrade, Upgrade::None);
                let slots = Slots::new(job.app_slot, placed.slot);
                let leg = if link.is_some() {
                    Leg::ToWorker
                } else {
                    Leg::Direct
                };
                let outcome = std::mem::take(&mut job.outcome);
                let Carrier::Hyper(sender) = sender else {
                    let why = "a protocol switch cannot go on a plain backhaul stream";
                    return Err((ProxyError::Upstream(why.into()), outcome));
                };
                let app_ref = upgrade::AppRef {
                    name: &app.app.name,
                    metrics: &app.metrics,
                };
                // Boxed: upgrades are rare, and their state would otherwise make every
                // request's future (moved into its box on each call) larger.
                let forwarded = Box::pin(upgrade::forward(
                    upgrade, sender, request, app_ref, outcome, slots, leg,
                ));
                match forwarded.await {
                    upgrade::Forwarded::Answer(answer) => return answer,
                    upgrade::Forwarded::Refused {
                        upgrade,
                        outcome,
                        slots,
                        reason,
                    } => {
                        // The worker did not give the switch to the instance: place it again.
                        job.upgrade = upgrade;
                        job.outcome = outcome;
                        job.app_slot = slots.into_app();
                        retrying = Some(RetryReason::WorkerRefused);
                        last_error = Some(worker_refused(inst, &reason));
                        continue;
                    }
                }
            }
            let reused = sender.is_reused();
            let sent = tokio::time::timeout(config.response_timeout, sender.send(request)).await;
            let (resp, pool_return) = match sent {
                Err(_) => return Err((ProxyError::UpstreamTimeout, job.outcome)),
                Ok(Ok(r)) => r,
                Ok(Err(CarryError::Unsent)) => {
                    // The pooled connection was closed under us before anything was written:
                    // the same instance may take it on a fresh connection.
                    hop.tried[placed.index] = false;
                    fresh_only = true;
                    retrying = Some(RetryReason::StaleConnection);
                    continue;
                }
                Ok(Err(CarryError::Failed(e))) => {
                    if body_too_large(&e) {
                        let limit = config.max_request_body;
                        return Err((ProxyError::BodyTooLarge { limit }, job.outcome));
                    }
                    let reason = retry_reason(&e, reused, &job.head.method);
                    let replayable = job.body.replay().is_some();
                    match reason {
                        Some(reason) if replayable => {
                            tracing::info!(instance = %inst.id, reason = reason.as_str(), error = %e, "request failed before the instance processed it; retrying");
                            retrying = Some(reason);
                            if reason == RetryReason::StaleConnection {
                                hop.tried[placed.index] = false;
                                fresh_only = true;
                            }
                            last_error = Some(e.to_string());
                            continue;
                        }
                        Some(reason) => {
                            tracing::info!(instance = %inst.id, reason = reason.as_str(), "not retried: the request body was too large to keep");
                        }
                        None => {}
                    }
                    return Err((ProxyError::Upstream(e.to_string()), job.outcome));
                }
            };
            if let Some(why) = link.and_then(|_| resp.headers().get(backhaul::RETRY_ELSEWHERE)) {
                // The worker did not give it to the instance: place it again without it.
                let why = String::from_utf8_lossy(why.as_bytes());
                retrying = Some(RetryReason::WorkerRefused);
                last_error = Some(worker_refused(inst, &why));
                continue;
            }
            let replay_header = if names.any_in(resp.headers()) {
                resp.headers().get(&names.replay)
            } else {
                None
            };
            if let Some(value) = replay_header {
                let asked = value.to_str().map_err(|_| "not text".to_string());
                let replay = asked.and_then(Replay::parse);
                match replay {
                    Err(problem) => {
                        tracing::warn!(instance = %inst.id, problem, "ignoring an invalid replay header");
                    }
                    Ok(replay) => {
                        // The instance's answer is swallowed; its connection is kept when the
                        // answer is complete.
                        if http_body::Body::is_end_stream(resp.body()) {
                            if let Some(p) = pool_return {
                                p.give_back();
                            }
                        }
                        drop(resp);
                        job.outcome.replays += 1;
                        app.metrics.replay();
                        if job.outcome.replays > MAX_REPLAYS {
                            return Err((ProxyError::ReplayLimit, job.outcome));
                        }
                        let from = ReplayFrom {
                            app: app.clone(),
                            instance: inst.id.instance().to_string(),
                            region: inst.region.clone(),
                            fallback: replay.fallback,
                            at: Instant::now(),
                        };
                        let target = match &replay.app {
                            None => app.clone(),
                            Some(name) => match self.replay_app(&app, name) {
                                Ok(a) => a,
                                Err(e) => return Err((e, job.outcome)),
                            },
                        };
                        job.head.replay_src(names, &from, replay.state.as_deref());
                        let same_app = Arc::ptr_eq(&target.app, &app.app);
                        let deadline = tokio::time::Instant::now()
                            + replay
                                .timeout
                                .unwrap_or(target.app.config.limits.queue_timeout);
                        hop = Hop::new(target, replay.wishes(), deadline);
                        if replay.elsewhere && same_app {
                            hop.tried[placed.index] = true;
                        }
                        if !same_app {
                            // Into another app: the request now counts against that app's
                            // budget on this node, and waits in its queue, not the source's.
                            let (a, m) = (&hop.app.app, &hop.app.metrics);
                            match admit::admit_app(a, deadline, m).await {
                                Ok(slot) => job.app_slot = slot,
                                Err(e) => {
                                    let why = format!("app `{}`: {e}", a.name);
                                    return Err((ProxyError::ReplayFailed(why), job.outcome));
                                }
                            }
                        }
                        replaying = Some(from);
                        retrying = None;
                        last_error = None;
                        continue;
                    }
                }
            }
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, false);
            let mut body = RespBody::upstream(body, pool_return, app.metrics.clone());
            body.hold(Slots::new(job.app_slot, placed.slot));
            let h = &mut parts.headers;
            if placed.preference_unmet && !hop.wishes.is_empty() {
                h.insert(
                    names.preferred_instance_unavailable.clone(),
                    routing::header_text(&hop.wishes.unmet_text()),
                );
            }
            if let Some(trace) = &job.trace {
                let text = format!(
                    "{trace}; attempts={}; replays={}",
                    job.outcome.attempts, job.outcome.replays
                );
                h.insert(names.route.clone(), routing::header_text(&text));
            }
            return Ok((Response::from_parts(parts, body), job.outcome));
        }
    }

    /// The app a replay names, if that app accepts replays from this one.
    fn replay_app(&self, from: &Arc<HttpApp>, name: &str) -> Result<Arc<HttpApp>, ProxyError> {
        if name == &*from.app.name {
            return Ok(from.clone());
        }
        let routes = self.shared.routes.load();
        let target = routes
            .http_app(name)
            .ok_or_else(|| ProxyError::ReplayFailed(format!("no app `{name}` serves HTTP here")))?;
        if !target
            .app
            .config
            .replay_from
            .iter()
            .any(|a| *a == *from.app.name)
        {
            return Err(ProxyError::ReplayFailed(format!(
                "app `{name}` does not accept replays from `{}`",
                from.app.name
            )));
        }
        Ok(target.clone())
    }

    /// Send a replay that failed back to the instance that asked for it.
    fn fallback(&self, job: &mut Job, from: &ReplayFrom, mode: Fallback, reason: &str) -> Hop {
        let names = &self.settings.names;
        let text = format!(
            "instance={};region={};reason={};elapsed_ms={}",
            from.instance,
            from.region,
            reason.replace(';', ","),
            from.at.elapsed().as_millis()
        );
        job.head
            .headers
            .insert(names.replay_failed.clone(), routing::header_text(&text));
        let mut wishes = Wishes::default();
        match mode {
            Fallback::ForceSelf => wishes.force_instance = Some(from.instance.clone()),
            Fallback::PreferSelf => wishes.prefer_instance = Some(from.instance.clone()),
        }
        tracing::info!(instance = %from.instance, reason, "replay failed; falling back to the replaying instance");
        let app = from.app.clone();
        let deadline = tokio::time::Instant::now() + app.app.config.limits.queue_timeout;
        Hop::new(app, wishes, deadline)
    }
}

/// Where a request is being placed: the app, its placement wishes resolved against that app,
/// the instances already tried there, and how long it may wait for a slot. A replay or its
/// fallback starts a new hop.
struct Hop {
    app: Arc<HttpApp>,
    wishes: Wishes,
    resolved: Resolved,
    tried: Vec<bool>,
    deadline: tokio::time::Instant,
}

impl Hop {
    fn new(app: Arc<HttpApp>, wishes: Wishes, deadline: tokio::time::Instant) -> Hop {
        Hop {
            resolved: wishes.resolve(&app.app),
            tried: vec![false; app.app.instances.len()],
            app,
            wishes,
            deadline,
        }
    }
}

/// Replays one request may go through.
const MAX_REPLAYS: u32 = 10;

/// One request on its way: what is needed to send it again.
struct Job {
    head: Head,
    body: ReqBody,
    upgrade: Upgrade,
    started: Instant,
    /// `P-Route` text, when a valid debug token asked for it.
    trace: Option<String>,
    outcome: Outcome,
    app_slot: anyedge_catalog::Slot,
    /// The client, for the forwarding headers each attempt adds (or has its worker add).
    forwarded: Forwarded,
}

/// The instance that asked for a replay.
struct ReplayFrom {
    app: Arc<HttpApp>,
    instance: String,
    region: Arc<str>,
    fallback: Option<Fallback>,
    at: Instant,
}

/// A request head that can be sent more than once.
struct Head {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
}

impl From<http::request::Parts> for Head {
    fn from(parts: http::request::Parts) -> Head {
        Head {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
        }
    }
}

impl Head {
    /// A request for one attempt: origin-form HTTP/1.1, or HTTP/2 with the host as authority.
    fn request(&self, body: ReqBody, h2: bool) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        let (mut parts, body) = req.into_parts();
        upstream_uri(&mut parts, h2);
        Request::from_parts(parts, body)
    }

    /// `P-Replay-Src: instance=..;region=..;t=..;state=..`
    fn replay_src(&mut self, names: &headers::Prefixed, from: &ReplayFrom, state: Option<&str>) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let mut text = format!("instance={};region={};t={t}", from.instance, from.region);
        if let Some(state) = state {
            text.push_str(";state=");
            text.push_str(state);
        }
        self.headers
            .insert(names.replay_src.clone(), routing::header_text(&text));
        self.headers.remove(&names.replay_failed);
    }
}

/// A worker answered that the instance did not get the request (or switch): the instance
/// backs off here unless the worker only had no room. Returns the error text for the case that
/// no other instance takes it.
fn worker_refused(inst: &anyedge_catalog::InstanceEntry, reason: &str) -> String {
    if backhaul::instance_failed(reason) {
        inst.live.connect_failed(Instant::now());
    }
    tracing::info!(instance = %inst.id, reason, "worker refused; placing elsewhere");
    format!("worker refused: {reason}")
}

/// The request's host, lower-cased, without port: `:authority` (HTTP/2, absolute-form) or `Host`.
/// Borrowed unless it had to be lower-cased (no allocation on the common path).
fn request_host(req: &Request<Incoming>) -> Option<std::borrow::Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => strip_port(req.headers().get(HOST)?.to_str().ok()?),
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

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `force_https`: 301 to the same host and path over HTTPS.
fn redirect_https(req: &Request<Incoming>) -> Response<RespBody> {
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
