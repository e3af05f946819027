//! The edge's attempt loop for one HTTP request, top-down: place it on an instance, open a
//! carrier to it (a pooled connection, or a backhaul stream to its worker), send, classify what
//! came back (retry elsewhere where it is safe, replay where the instance asks), and answer.
//! Every failure keeps its typed [`Cause`] until the error map.

use super::carrier::{retry_reason, Carrier, CarryError};
use super::routing::{self, Fallback, Replay, Resolved, Wishes};
use super::service::ProxyService;
use crate::admit::{self, AdmitError, Placed};
use crate::error::{ProxyError, ReplayFailure};
use crate::instance::attempt::{response_back, upstream_uri, Cause, Outcome};
use crate::instance::body::{ReqBody, RespBody, Slots, UpBody};
use crate::instance::headers::{self, Forwarded, FAILED, RETRY_ELSEWHERE};
use crate::instance::http1::{self, RawRequest};
use crate::instance::outlier;
use crate::instance::pool::{Failure, Sender, Target};
use crate::instance::upgrade::{self, Leg, Upgrade};
use crate::routes::HttpApp;
use anyedge_backhaul::retry::RetryElsewhere;
use anyedge_catalog::{InstanceEntry, PowerState};
use anyedge_telemetry::{OutlierReason, RetryReason};
use http::{Request, Response, StatusCode, Uri};
use std::sync::Arc;
use std::time::Instant;

/// Replays one request may go through.
const MAX_REPLAYS: u32 = 10;

/// What a request ends with: the response, or the error the error map answers.
pub(super) type Answer = Result<(Response<RespBody>, Outcome), (ProxyError, Outcome)>;

/// What the loop does after a step. Small on purpose: the request's `Outcome` stays in its
/// `Job` until `run` answers, so no step moves a whole answer around. (`Answered` is the
/// common case: boxing it would cost an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Flow {
    /// Place the request again (another instance, a replay, a fallback).
    Again,
    /// Answer with this error.
    Fail(ProxyError),
    /// Answer with the instance's response.
    Answered(Response<RespBody>),
    /// A protocol switch's own answer (rare).
    Switched(Box<Answer>),
}

/// Where a request is being placed: the app, its placement wishes resolved against that app,
/// the instances already tried there, and how long it may wait for a slot. A replay or its
/// fallback starts a new hop.
pub(super) struct Hop {
    app: Arc<HttpApp>,
    wishes: Wishes,
    resolved: Resolved,
    /// Inline up to 16 instances: no allocation per request for most apps.
    tried: smallvec::SmallVec<[bool; 16]>,
    deadline: tokio::time::Instant,
}

impl Hop {
    pub fn new(app: Arc<HttpApp>, wishes: Wishes, deadline: tokio::time::Instant) -> Hop {
        Hop {
            resolved: wishes.resolve(&app.app),
            tried: smallvec::smallvec![false; app.app.instances.len()],
            app,
            wishes,
            deadline,
        }
    }
}

/// One request on its way: what is needed to send it again, and the loop's state between
/// attempts.
pub(super) struct Job {
    pub head: Head,
    pub body: ReqBody,
    pub upgrade: Upgrade,
    pub started: Instant,
    /// `P-Route` text, when a valid debug token asked for it.
    pub trace: Option<String>,
    pub outcome: Outcome,
    /// The request's slot in its app's budget; held by the response once there is one (always
    /// `Some` between attempts).
    pub app_slot: Option<anyedge_catalog::Slot>,
    /// The client, for the forwarding headers each attempt adds (or has its worker add).
    pub forwarded: Forwarded,
    /// The next attempt must open a new connection (a pooled one was found closed).
    pub fresh_only: bool,
    /// Why the last attempt failed, for the answer when no instance is left.
    pub last: Option<Box<Cause>>,
    /// Why the next attempt is a retry; counted when that attempt is made.
    pub retrying: Option<RetryReason>,
    /// The replay in progress: who asked, and whether its fallback was used.
    pub replaying: Option<Box<ReplayFrom>>,
}

/// The instance that asked for a replay.
pub(super) struct ReplayFrom {
    app: Arc<HttpApp>,
    instance: String,
    region: Arc<str>,
    fallback: Option<Fallback>,
    at: Instant,
}

/// A request head that can be sent more than once: its fields are `raw`'s (as received, a
/// plain request from our HTTP/1.1 server) then `headers`, or `headers` alone.
pub(super) struct Head {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    raw: Option<RawRequest>,
}

impl Head {
    pub fn new(parts: http::request::Parts, raw: Option<RawRequest>) -> Head {
        Head {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            raw,
        }
    }

    /// A request for one attempt: origin-form HTTP/1.1, or HTTP/2 with the host as authority.
    fn request(&self, body: ReqBody, h2: bool, names: &headers::Prefixed) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = match &self.raw {
            Some(raw) => raw.uri(),
            None => self.uri.clone(),
        };
        match &self.raw {
            Some(raw) => {
                let map = req.headers_mut();
                raw.fill(map, names);
                for (name, value) in &self.headers {
                    map.append(name.clone(), value.clone());
                }
            }
            None => *req.headers_mut() = self.headers.clone(),
        }
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

/// An instance chosen for one attempt, with where and how it is reached.
struct Chosen {
    app: Arc<HttpApp>,
    placed: Placed,
    /// Over backhaul when the instance runs on another node.
    remote: bool,
    h2: bool,
}

impl Chosen {
    fn inst(&self) -> &InstanceEntry {
        &self.app.app.instances[self.placed.index]
    }

    /// A failure that passive outlier detection counts. Not for an instance on another node:
    /// its worker counts its requests (every edge's) and reports an ejection in its load feed,
    /// and what comes back over backhaul may be the worker's own answer, not the instance's.
    fn outlier_failed(&self, reason: OutlierReason) {
        if !self.remote {
            outlier::failed(&self.app.app, self.inst(), &self.app.metrics, reason);
        }
    }
}

impl ProxyService {
    /// Admit the request into its app's budget, then place, connect, send; retry where it is
    /// safe, replay where the instance asks. The job and hop are borrowed: the request's
    /// future holds them once.
    pub(super) async fn run(&self, job: &mut Job, hop: &mut Hop) -> Answer {
        if job.app_slot.is_none() {
            let (a, m) = (&hop.app.app, &hop.app.metrics);
            match admit::admit_app(a, hop.deadline, m).await {
                Ok(slot) => job.app_slot = Some(slot),
                Err(e) => return Err((ProxyError::Admit(e), std::mem::take(&mut job.outcome))),
            }
        }
        let retry_until = job.started + self.settings.config.retry_deadline;
        loop {
            let flow = match self.place(job, hop, retry_until).await {
                Ok(chosen) => match self.open(job, &chosen).await {
                    Some(carrier) => self.attempt(job, hop, chosen, carrier).await,
                    None => Flow::Again,
                },
                Err(flow) => flow,
            };
            match flow {
                Flow::Again => continue,
                Flow::Fail(e) => {
                    if let Some(trace) = job.trace.take() {
                        let (attempts, replays) = (job.outcome.attempts, job.outcome.replays);
                        let text = format!("{trace}; attempts={attempts}; replays={replays}");
                        job.outcome.route = Some(Box::new(text));
                    }
                    return Err((e, std::mem::take(&mut job.outcome)));
                }
                Flow::Answered(resp) => return Ok((resp, std::mem::take(&mut job.outcome))),
                Flow::Switched(answer) => return *answer,
            }
        }
    }

    /// The next instance for the request, or why there is none (a failed replay may fall back
    /// to the instance that asked for it: `Flow::Again` on a new hop).
    async fn place(
        &self,
        job: &mut Job,
        hop: &mut Hop,
        retry_until: Instant,
    ) -> Result<Chosen, Flow> {
        let config = &self.settings.config;
        let over_budget = job.outcome.attempts >= config.max_attempts + job.outcome.replays
            || Instant::now() >= retry_until;
        let placed = if over_budget {
            Err(AdmitError::Unavailable)
        } else {
            let constraints = hop.resolved.constraints();
            let (a, m) = (&hop.app.app, &hop.app.metrics);
            admit::place(
                a,
                &constraints,
                &hop.tried,
                hop.deadline,
                m,
                job.trace.as_mut(),
            )
            .await
        };
        if job.outcome.attempts == 0 {
            job.outcome.queue = job.started.elapsed();
        }
        let placed = placed.map_err(|e| self.unplaced(job, hop, e, over_budget))?;
        if let Some(reason) = job.retrying.take() {
            // The app's retry budget (`retry_budget`): past it the request fails as if no
            // instance were left, with the answer its last failure alone would get.
            let refusal = match job.last.as_deref() {
                Some(Cause::Refused(r)) => Some(*r),
                _ => None,
            };
            let budgeted = crate::policy::budgeted(reason, refusal);
            if budgeted && !crate::policy::allow_retry(&hop.app.app, &hop.app.metrics, reason) {
                if let Some(trace) = job.trace.as_mut() {
                    trace.push_str("; retry_skipped=budget; reason=");
                    trace.push_str(reason.as_str());
                }
                job.retrying = Some(reason);
                return Err(self.unplaced(job, hop, AdmitError::Unavailable, true));
            }
            hop.app.metrics.retry(reason);
        }
        hop.tried[placed.index] = true;
        job.outcome.attempts += 1;
        let app = hop.app.clone();
        let remote = app.remotes[placed.index].is_some();
        let h2_backend = app.service().http_options.h2_backend;
        let h2 = remote || (h2_backend && matches!(job.upgrade, Upgrade::None));
        Ok(Chosen {
            app,
            placed,
            remote,
            h2,
        })
    }

    /// No instance for the request: fall back to the replaying instance when the replay asked
    /// for that, else the answer.
    fn unplaced(&self, job: &mut Job, hop: &mut Hop, e: AdmitError, over_budget: bool) -> Flow {
        if let Some(from) = job.replaying.as_mut() {
            if let Some(mode) = from.fallback.take() {
                let from = (
                    from.app.clone(),
                    from.instance.clone(),
                    from.region.clone(),
                    from.at,
                );
                *hop = self.fallback(&mut job.head, &from, mode, &e.to_string());
                job.retrying = None;
                return Flow::Again;
            }
        }
        let err = match (e, job.last.take()) {
            // The last instance tried failed the request after it was written, and no other
            // is left: the answer a single try would get.
            (_, Some(_)) if job.retrying == Some(RetryReason::Timeout) => {
                ProxyError::UpstreamTimeout
            }
            (_, Some(last)) if job.retrying == Some(RetryReason::Reset) => {
                ProxyError::Upstream(last)
            }
            (_, Some(last)) if over_budget || e == AdmitError::Unavailable => {
                ProxyError::NoInstance(last)
            }
            _ if job.replaying.is_some() => ProxyError::ReplayFailed(ReplayFailure::Placement(e)),
            _ => ProxyError::Admit(e),
        };
        Flow::Fail(err)
    }

    /// A carrier to the chosen instance; `None` when it cannot be reached (it backs off and
    /// the request is placed again).
    async fn open(&self, job: &mut Job, c: &Chosen) -> Option<Carrier> {
        let inst = c.inst();
        let connect_timeout = self.shared.routes.load().limits.connect_timeout;
        let idle_timeout = self.settings.config.upstream_idle_timeout;
        let service = c.app.service();
        let target = Target::of(inst, service, c.h2, connect_timeout, idle_timeout)?;
        let connecting = Instant::now();
        let switching = !matches!(job.upgrade, Upgrade::None);
        let opened = match c.app.remotes[c.placed.index].as_ref().map(|r| &r.link) {
            Some(link) if !switching => {
                let sender = link.sender(&self.shared, target.connect_timeout).await;
                sender.map(Carrier::Stream)
            }
            Some(link) => {
                // Boxed: upgrades are rare (see `attempt`).
                let opening = Box::pin(link.upgrade_sender(&self.shared, target.connect_timeout));
                opening.await.map(|s| Carrier::Hyper(Sender::H2(s)))
            }
            None => {
                let pool = &c.app.pools[c.placed.index];
                let resolver = &self.shared.resolver;
                let sender = if job.fresh_only || switching {
                    pool.fresh(&target, resolver).await
                } else {
                    pool.sender(&target, resolver).await
                };
                sender.map(Carrier::Hyper)
            }
        };
        job.outcome.connect += connecting.elapsed();
        job.fresh_only = false;
        match opened {
            Ok(carrier) => {
                inst.live.connect_succeeded();
                job.outcome.instance = Some(inst.id.clone());
                Some(carrier)
            }
            Err(e) => {
                inst.live.connect_failed(Instant::now());
                if let crate::instance::pool::UpstreamError::Connect(a) = &e {
                    c.app.metrics.connect_failure(a.reason());
                }
                tracing::info!(instance = %inst.id, error = %e, "instance unreachable; trying another");
                let cause = Cause::Unreachable(e);
                debug_assert!(cause.retry_elsewhere(), "nothing was sent");
                job.retrying = Some(RetryReason::Connect);
                job.last = Some(Box::new(cause));
                None
            }
        }
    }

    /// Send the request on `carrier` and act on what comes back.
    async fn attempt(&self, job: &mut Job, hop: &mut Hop, c: Chosen, carrier: Carrier) -> Flow {
        // Every attempt sends a copy (the first reads the client's body as it goes); older
        // copies stop, so a replayed instance still reading cannot steal the body.
        let Some(body) = job.body.next_attempt() else {
            let err = match job.replaying {
                Some(_) => {
                    ProxyError::ReplayFailed(ReplayFailure::Cause(Box::new(Cause::BodyNotKept)))
                }
                None => ProxyError::Upstream(Box::new(Cause::BodyNotKept)),
            };
            return Flow::Fail(err);
        };
        let names = &self.settings.names;
        let reused = carrier.is_reused();
        // Over backhaul the worker, which owns the instance, times it out (and counts it as an
        // outlier); the edge waits a little longer, for the worker's answer to travel back.
        let timeout = match c.remote {
            true => self.settings.config.response_timeout + REMOTE_TIMEOUT_GRACE,
            false => self.settings.config.response_timeout,
        };
        let sent = match carrier {
            // An instance on this node over HTTP/1.1: our client writes the head from the
            // request's own parts and the client's forwarding fields (no copy per attempt).
            Carrier::Hyper(Sender::H1 { io, pool, .. }) if matches!(job.upgrade, Upgrade::None) => {
                let head = http1::Outbound {
                    method: &job.head.method,
                    uri: &job.head.uri,
                    headers: &job.head.headers,
                    raw: job.head.raw.as_ref(),
                    fields: Some(headers::ClientFields {
                        names,
                        client: job.forwarded,
                    }),
                    raw_answer: self.raw_answers,
                };
                let sending = http1::send(io, head, body, pool);
                tokio::time::timeout(timeout, sending).await.map(|sent| {
                    sent.map(|resp| resp.map(UpBody::H1))
                        .map_err(|e| CarryError::Failed(Cause::Instance(Failure::H1(e))))
                })
            }
            carrier => {
                let mut request = job.head.request(body, c.h2, names);
                match c.app.remotes[c.placed.index].as_ref() {
                    Some(remote) => remote.tag(&mut request, &job.forwarded),
                    None => headers::add_client(request.headers_mut(), names, &job.forwarded),
                }
                if !matches!(job.upgrade, Upgrade::None) {
                    // Boxed: upgrades are rare, and their state would otherwise make every
                    // request's future (moved into its box on each call) larger.
                    return Box::pin(self.switch(job, c, carrier, request)).await;
                }
                // Boxed: this path's state (hyper's HTTP/2 client, a backhaul stream) would
                // otherwise make every request's future larger, and our HTTP/1.1 client's
                // path (above) is the one that allocates nothing here.
                tokio::time::timeout(timeout, Box::pin(carrier.send(request))).await
            }
        };
        let mut resp = match sent {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => return self.send_failed(job, hop, &c, e, reused),
            Err(_) => {
                c.outlier_failed(OutlierReason::Timeout);
                let retry = self.settings.config.retry_on.timeout;
                let why = (RetryReason::Timeout, Box::new(Cause::TimedOut));
                return failed_after_send(job, &c, why, retry)
                    .unwrap_or_else(|_| Flow::Fail(ProxyError::UpstreamTimeout));
            }
        };
        if c.remote {
            if let Some(why) = resp.headers().get(RETRY_ELSEWHERE) {
                // The worker did not give it to the instance: place it again without it.
                let why = RetryElsewhere::parse_bytes(why.as_bytes());
                worker_refused(job, c.inst(), why);
                if why == RetryElsewhere::NotRunning && c.inst().live.power.remote() {
                    // Stopped on its worker (this edge had not heard yet): placement may ask
                    // for its start and send it there again (`docs/on-demand.md`).
                    c.inst()
                        .live
                        .power
                        .report(PowerState::Stopped, Instant::now());
                    hop.tried[c.placed.index] = false;
                }
                return Flow::Again;
            }
            if let Some(kind) = worker_failure(&mut resp) {
                // The worker's instance failed the request after it was written (the worker
                // counted it): like a failure here, or the worker's answer as it is.
                let on = &self.settings.config.retry_on;
                let (retry, cause) = match kind {
                    RetryReason::Timeout => (on.timeout, Cause::TimedOut),
                    _ => (on.reset, Cause::WorkerReset),
                };
                if let Ok(flow) = failed_after_send(job, &c, (kind, Box::new(cause)), retry) {
                    return flow;
                }
            }
        } else {
            outlier::answered(&c.app.app, c.inst(), &c.app.metrics, resp.status());
        }
        match self.replay_asked(&resp) {
            // Boxed: replays are rare (see `switch`).
            Some(replay) => Box::pin(self.replay(job, hop, &c, replay, resp)).await,
            None => self.respond(job, hop, c, resp),
        }
    }

    /// A send that failed: retried when the instance provably did not process the request and
    /// its body is still kept.
    fn send_failed(
        &self,
        job: &mut Job,
        hop: &mut Hop,
        c: &Chosen,
        e: CarryError,
        reused: bool,
    ) -> Flow {
        let e = match e {
            CarryError::Unsent => {
                // The pooled connection was closed under us before anything was written: the
                // same instance may take it on a fresh connection.
                hop.tried[c.placed.index] = false;
                job.fresh_only = true;
                job.retrying = Some(RetryReason::StaleConnection);
                return Flow::Again;
            }
            CarryError::Failed(e) => e,
        };
        let limit = self.settings.config.max_request_body;
        if let Some(client) = e.body_error().and_then(|b| ProxyError::from_body(b, limit)) {
            return Flow::Fail(client);
        }
        let inst = c.inst();
        let retry = retry_reason(&e, reused, &job.head.method);
        if retry.is_none() {
            // Written, and maybe processed: the instance failed it.
            c.outlier_failed(OutlierReason::Reset);
            let on = self.settings.config.retry_on.reset;
            let why = (RetryReason::Reset, Box::new(e));
            return match failed_after_send(job, c, why, on) {
                Ok(flow) => flow,
                Err(cause) => Flow::Fail(ProxyError::Upstream(cause)),
            };
        }
        match retry {
            Some(reason) if job.body.replay().is_some() => {
                tracing::info!(instance = %inst.id, reason = reason.as_str(), error = %e, "request failed before the instance processed it; retrying");
                // The same instance may take it on a fresh connection: after a stale pooled
                // connection, and once after a GOAWAY (the peer closes that connection, not
                // necessarily its service: a worker upgraded in place, a restarting HTTP/2
                // backend; with one instance, "elsewhere" is nowhere).
                let fresh = reason == RetryReason::StaleConnection
                    || (reason == RetryReason::GoAway && job.retrying != Some(RetryReason::GoAway));
                job.retrying = Some(reason);
                if fresh {
                    hop.tried[c.placed.index] = false;
                    job.fresh_only = true;
                }
                job.last = Some(Box::new(e));
                return Flow::Again;
            }
            Some(reason) => {
                tracing::info!(instance = %inst.id, reason = reason.as_str(), "not retried: the request body was too large to keep");
            }
            None => {}
        }
        Flow::Fail(ProxyError::Upstream(Box::new(e)))
    }

    /// A protocol switch: tunnel once both sides agree; a worker's refusal places it again.
    async fn switch(
        &self,
        job: &mut Job,
        c: Chosen,
        carrier: Carrier,
        request: Request<ReqBody>,
    ) -> Flow {
        let upgrade = std::mem::replace(&mut job.upgrade, Upgrade::None);
        let Carrier::Hyper(sender) = carrier else {
            // `open` gives a switch a hyper connection, also to a worker.
            return Flow::Fail(ProxyError::BadRequest(
                "a protocol switch cannot go on a plain stream",
            ));
        };
        let Some(app_slot) = job.app_slot.take() else {
            return Flow::Fail(ProxyError::Admit(AdmitError::Unavailable));
        };
        let outcome = std::mem::take(&mut job.outcome);
        let index = c.placed.index;
        let slots = Slots::new(app_slot, c.placed.slot);
        let leg = if c.remote { Leg::ToWorker } else { Leg::Direct };
        let app = upgrade::AppRef {
            name: &c.app.app.name,
            metrics: &c.app.metrics,
        };
        match upgrade::forward(upgrade, sender, request, app, outcome, slots, leg).await {
            upgrade::Forwarded::Answer(answer) => {
                Flow::Switched(Box::new((*answer).map_err(|(e, o)| (e.into(), o))))
            }
            upgrade::Forwarded::Refused {
                upgrade,
                outcome,
                slots,
                reason,
            } => {
                // The worker did not give the switch to the instance: place it again.
                job.upgrade = upgrade;
                job.outcome = outcome;
                job.app_slot = Some(slots.into_app());
                worker_refused(job, &c.app.app.instances[index], reason);
                Flow::Again
            }
        }
    }

    /// The instance's `P-Replay` request, if it made a valid one.
    fn replay_asked(&self, resp: &Response<UpBody>) -> Option<Replay> {
        let names = &self.settings.names;
        let value = match resp.body() {
            UpBody::H1(b) if b.raw_head().is_some() => {
                let raw = b.raw_head()?;
                if !names.any_in_raw(raw) {
                    return None;
                }
                raw.get(names.replay.as_str().as_bytes())?
            }
            _ => {
                if !names.any_in(resp.headers()) {
                    return None;
                }
                resp.headers().get(&names.replay)?.as_bytes()
            }
        };
        // As `HeaderValue::to_str`: visible ASCII and tabs only.
        let text = value.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
        let asked = match text {
            true => std::str::from_utf8(value).map_err(|_| "not text".to_string()),
            false => Err("not text".to_string()),
        };
        match asked.and_then(Replay::parse) {
            Ok(replay) => Some(replay),
            Err(problem) => {
                tracing::warn!(problem, "ignoring an invalid replay header");
                None
            }
        }
    }

    /// Swallow the instance's answer and place the request again where it asked.
    async fn replay(
        &self,
        job: &mut Job,
        hop: &mut Hop,
        c: &Chosen,
        replay: Replay,
        resp: Response<UpBody>,
    ) -> Flow {
        // The instance's connection went back to its pool if its answer was complete.
        drop(resp);
        job.outcome.replays += 1;
        c.app.metrics.replay();
        if job.outcome.replays > MAX_REPLAYS {
            return Flow::Fail(ProxyError::ReplayLimit);
        }
        let inst = c.inst();
        let from = ReplayFrom {
            app: c.app.clone(),
            instance: inst.id.instance().to_string(),
            region: inst.region.clone(),
            fallback: replay.fallback,
            at: Instant::now(),
        };
        let target = match &replay.app {
            None => c.app.clone(),
            Some(name) => match self.replay_app(&c.app, name) {
                Ok(a) => a,
                Err(e) => return Flow::Fail(ProxyError::ReplayFailed(e)),
            },
        };
        job.head
            .replay_src(&self.settings.names, &from, replay.state.as_deref());
        let same_app = Arc::ptr_eq(&target.app, &c.app.app);
        let wait = replay
            .timeout
            .unwrap_or(target.app.config.limits.queue_timeout);
        let deadline = tokio::time::Instant::now() + wait;
        *hop = Hop::new(target, replay.wishes(), deadline);
        if replay.elsewhere && same_app {
            hop.tried[c.placed.index] = true;
        }
        if !same_app {
            if let Err(e) = enter_app(job, hop, deadline).await {
                return Flow::Fail(e);
            }
        }
        job.replaying = Some(Box::new(from));
        job.retrying = None;
        job.last = None;
        Flow::Again
    }

    /// The instance's response for the client: hop-by-hop headers off, slots held until the
    /// body has been sent, the preference and route headers when asked for.
    fn respond(&self, job: &mut Job, hop: &Hop, c: Chosen, resp: Response<UpBody>) -> Flow {
        let Some(app_slot) = job.app_slot.take() else {
            return Flow::Fail(ProxyError::Admit(AdmitError::Unavailable));
        };
        // Nothing sends the body again from here: a spill file goes now, not when the upload
        // still streaming to this instance ends.
        job.body.stop_keeping();
        let slots = Slots::new(app_slot, c.placed.slot);
        let mut resp = response_back(resp, &c.app.metrics, slots);
        let names = &self.settings.names;
        let h = resp.headers_mut();
        if c.placed.preference_unmet && !hop.wishes.is_empty() {
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
        Flow::Answered(resp)
    }

    /// The app a replay names, if that app accepts replays from this one.
    fn replay_app(&self, from: &Arc<HttpApp>, name: &str) -> Result<Arc<HttpApp>, ReplayFailure> {
        if name == &*from.app.name {
            return Ok(from.clone());
        }
        let routes = self.shared.routes.load();
        let target = routes
            .http_app(name)
            .ok_or_else(|| ReplayFailure::NoApp(name.into()))?;
        if !target
            .app
            .config
            .replay_from
            .iter()
            .any(|a| *a == *from.app.name)
        {
            return Err(ReplayFailure::NotAccepted {
                app: name.into(),
                from: from.app.name.clone(),
            });
        }
        Ok(target.clone())
    }

    /// Send a replay that failed back to the instance that asked for it.
    fn fallback(
        &self,
        head: &mut Head,
        from: &(Arc<HttpApp>, String, Arc<str>, Instant),
        mode: Fallback,
        reason: &str,
    ) -> Hop {
        let (app, instance, region, at) = from;
        let names = &self.settings.names;
        let text = format!(
            "instance={instance};region={region};reason={};elapsed_ms={}",
            reason.replace(';', ","),
            at.elapsed().as_millis()
        );
        head.headers
            .insert(names.replay_failed.clone(), routing::header_text(&text));
        let mut wishes = Wishes::default();
        match mode {
            Fallback::ForceSelf => wishes.force_instance = Some(instance.clone()),
            Fallback::PreferSelf => wishes.prefer_instance = Some(instance.clone()),
        }
        tracing::info!(%instance, reason, "replay failed; falling back to the replaying instance");
        let deadline = tokio::time::Instant::now() + app.app.config.limits.queue_timeout;
        Hop::new(app.clone(), wishes, deadline)
    }
}

/// A worker answered that the instance did not get the request (or switch): the instance
/// backs off here unless the worker only had no room; the request is placed again.
/// How much longer than `response_timeout` the edge waits for an instance on another node:
/// the worker's own timeout answer (504, [`FAILED`]: `timeout`) must reach the edge first, so the
/// worker, which counts its instances' failures, sees the timeout.
const REMOTE_TIMEOUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// A request that failed after it was written to its instance (`why`: `Timeout` or `Reset`,
/// with its cause), which may have processed it: another instance (`Flow::Again`) when `retry`
/// (`[http] retry_on`) allows and it is safe (an idempotent request, not a protocol switch,
/// whose body is still kept), within `max_attempts` and `retry_deadline`; the cause back when
/// not. When no instance is left, the answer is the one this failure alone would get
/// (`unplaced`).
fn failed_after_send(
    job: &mut Job,
    c: &Chosen,
    (why, cause): (RetryReason, Box<Cause>),
    retry: bool,
) -> Result<Flow, Box<Cause>> {
    let retry = retry
        && job.head.method.is_idempotent()
        && matches!(job.upgrade, Upgrade::None)
        && job.body.replay().is_some();
    if !retry {
        return Err(cause);
    }
    tracing::info!(instance = %c.inst().id, reason = why.as_str(), "the instance failed an idempotent request before answering; it goes to another instance");
    job.retrying = Some(why);
    job.last = Some(cause);
    Ok(Flow::Again)
}

/// A worker's answer for a request its instance failed after it was written
/// (`anyedge-backhaul-failed`: `timeout` on a 504, `reset` on a 502), the marker removed.
fn worker_failure<B>(resp: &mut Response<B>) -> Option<RetryReason> {
    let status = resp.status();
    if status != StatusCode::GATEWAY_TIMEOUT && status != StatusCode::BAD_GATEWAY {
        return None;
    }
    let why = resp.headers_mut().remove(FAILED)?;
    Some(match why.as_bytes() {
        b"timeout" => RetryReason::Timeout,
        _ => RetryReason::Reset,
    })
}

fn worker_refused(job: &mut Job, inst: &InstanceEntry, reason: RetryElsewhere) {
    if reason.backs_off() {
        inst.live.connect_failed(Instant::now());
    }
    tracing::info!(instance = %inst.id, reason = reason.as_str(), "worker refused; placing elsewhere");
    let cause = Cause::Refused(reason);
    debug_assert!(
        cause.retry_elsewhere(),
        "a refused request reached no instance"
    );
    job.retrying = Some(RetryReason::WorkerRefused);
    job.last = Some(Box::new(cause));
}

/// A replay into another app: the request now counts against that app's budget on this node,
/// and waits in its queue, not the source's.
async fn enter_app(
    job: &mut Job,
    hop: &Hop,
    deadline: tokio::time::Instant,
) -> Result<(), ProxyError> {
    let (a, m) = (&hop.app.app, &hop.app.metrics);
    match admit::admit_app(a, deadline, m).await {
        Ok(slot) => {
            job.app_slot = Some(slot);
            Ok(())
        }
        Err(error) => {
            let app = a.name.clone();
            Err(ProxyError::ReplayFailed(ReplayFailure::TargetAdmit {
                app,
                error,
            }))
        }
    }
}
