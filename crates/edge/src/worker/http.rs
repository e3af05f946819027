//! The worker's side of HTTP backhaul: each stream names an app and one of this node's
//! instances. The worker is the truth about its instances: it checks the instance exists here
//! and belongs to the app, takes its own slots (the app's budget on this node, the instance's
//! hard limit), connects, and forwards. Anything that stops the request before the instance
//! sees it is answered 503 with `anyedge-retry-elsewhere: <reason>` before any of the body is
//! read, and the edge places the request again without this instance.

use super::feed::FeedBody;
use crate::error::ProxyError;
use crate::instance::attempt::{
    fill_host, response_back, retry_reason, upstream_uri, Cause, Outcome,
};
use crate::instance::body::{ClientBody, ReqBody, RespBody, Slots};
use crate::instance::headers::{self, FAILED, FEED, RETRY_ELSEWHERE, START, STREAM};
use crate::instance::outlier;
use crate::instance::pool::{SendError, Sender, Target};
use crate::instance::upgrade::{self, Leg, Upgrade};
use crate::routes::{HttpApp, Routes};
use crate::Shared;
use anyedge_backhaul::retry::RetryElsewhere;
use anyedge_backhaul::stream::parse_stream;
use anyedge_telemetry::OutlierReason;

use http::{HeaderValue, Request, Response, StatusCode};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub(crate) struct WorkerService {
    pub shared: Arc<Shared>,
    /// The edge's node id, from its certificate (for logs).
    pub edge: Arc<str>,
}

/// A stream's answer: a forwarded response (`Left`), or the load feed (`Right`).
pub(crate) type WorkerBody = http_body_util::Either<RespBody, FeedBody>;

impl WorkerService {
    /// A stream's answer (our HTTP/2 server calls this as its head arrives): the load feed, a
    /// start request's answer (`super::start`), or the request forwarded to its instance.
    pub(crate) fn answer(
        &self,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Response<WorkerBody>> + Send + 'static {
        let this = self.clone();
        async move {
            if let Some(marker) = req.headers().get(FEED) {
                let version = anyedge_backhaul::feed::version_asked(marker.as_bytes());
                let body = super::feed::stream(&this.shared, version);
                return Response::new(WorkerBody::Right(body));
            }
            if let Some(start) = req.headers().get(START) {
                // Boxed: starts are rare; inline, their state would enlarge every stream's future.
                let answer = Box::pin(super::start::answer(&this.shared, start, &this.edge));
                return answer.await.map(WorkerBody::Left);
            }
            this.handle(req).await.map(WorkerBody::Left)
        }
    }
}

/// Why a stream was not carried to its instance (the `anyedge-retry-elsewhere` value).
pub(super) fn refuse(shared: &Shared, reason: RetryElsewhere) -> Response<RespBody> {
    shared.metrics.backhaul.refused(reason.as_str());
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut()
        .insert(RETRY_ELSEWHERE, HeaderValue::from_static(reason.as_str()));
    resp
}

/// A stream the worker took: its app, instance and slots.
struct Taken {
    app: Arc<HttpApp>,
    index: usize,
    slots: Slots,
}

impl WorkerService {
    async fn handle(&self, mut req: Request<ClientBody>) -> Response<RespBody> {
        let shared = &self.shared;
        let routes = shared.routes.load_full();
        let taken = match self.take(&routes, &mut req) {
            Ok(t) => t,
            Err(reason) => return refuse(shared, reason),
        };
        let upgrade = match upgrade::classify(&mut req) {
            Ok(u) => u,
            Err(_) => return refuse(shared, RetryElsewhere::BadRequest),
        };
        let h2 = taken.app.service().http_options.h2_backend && matches!(upgrade, Upgrade::None);
        let sender = match self.connect(&routes, &taken, h2, &upgrade).await {
            Ok(s) => s,
            Err(reason) => return refuse(shared, reason),
        };
        let (mut parts, body) = req.into_parts();
        fill_host(&mut parts.headers, &parts.uri);
        upstream_uri(&mut parts, h2);
        // Streamed as it comes: retries are the edge's (it keeps the body when it may need it).
        let limit = routes.http.config.max_request_body;
        let body = ReqBody::new(body, 0, limit, taken.app.metrics.clone());
        let request = Request::from_parts(parts, body);
        if matches!(upgrade, Upgrade::None) {
            self.send(&routes, taken, sender, request).await
        } else {
            // Boxed: upgrades are rare; inline, their state would enlarge every stream's future.
            Box::pin(switch(&routes, taken, upgrade, sender, request)).await
        }
    }

    /// Read the stream's metadata (its target, and the client, whose forwarding headers are
    /// written here), and admit it; or why the edge should place it elsewhere.
    fn take(
        &self,
        routes: &Routes,
        req: &mut Request<ClientBody>,
    ) -> Result<Taken, RetryElsewhere> {
        let h = req.headers_mut();
        let stream = h.remove(STREAM);
        let parsed = stream
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(parse_stream);
        let found = match parsed {
            None => Err(RetryElsewhere::BadRequest),
            Some((app, instance, client)) => {
                find(routes, app, instance, client.port).inspect(|_| {
                    headers::add_client(h, &routes.http.names, &client);
                })
            }
        };
        let (app, index) = found.inspect_err(|reason| {
            tracing::info!(edge = %self.edge, reason = reason.as_str(), "backhaul stream refused");
        })?;
        let backhaul = &self.shared.metrics.backhaul;
        backhaul.streams.fetch_add(1, Ordering::Relaxed);
        // Stopped (or starting, stopping, failed) by this node's driver: the edge asks for a
        // start on a stream of its own (`super::start`) and sends the request again. A draining
        // node says that instead (below).
        let power = &app.app.instances[index].live.power;
        if power.driven() && !power.running() && !self.shared.drain.is_draining() {
            return Err(RetryElsewhere::NotRunning);
        }
        let (app_slot, slot) = super::admit::admit(&self.shared, &app.app, index)?;
        let slots = Slots::new(app_slot, slot);
        Ok(Taken { app, index, slots })
    }

    /// A connection to the instance: pooled, or new for a protocol switch.
    async fn connect(
        &self,
        routes: &Routes,
        t: &Taken,
        h2: bool,
        upgrade: &Upgrade,
    ) -> Result<Sender, RetryElsewhere> {
        let inst = &t.app.app.instances[t.index];
        let (connect, idle) = (
            routes.limits.connect_timeout,
            routes.http.config.upstream_idle_timeout,
        );
        let target = Target::of(inst, t.app.service(), h2, connect, idle)
            .ok_or(RetryElsewhere::NoService)?;
        let (pool, resolver) = (&t.app.pools[t.index], &self.shared.resolver);
        let sender = if matches!(upgrade, Upgrade::None) {
            pool.sender(&target, resolver).await
        } else {
            pool.fresh(&target, resolver).await
        };
        match sender {
            Ok(s) => {
                inst.live.connect_succeeded();
                Ok(s)
            }
            Err(e) => {
                inst.live.connect_failed(Instant::now());
                tracing::info!(instance = %inst.id, error = %e, "instance unreachable; the edge will place elsewhere");
                Err(RetryElsewhere::ConnectFailed)
            }
        }
    }

    /// Send to the instance; a failure it provably did not process goes back to the edge as a
    /// refusal, so the edge places it again.
    async fn send(
        &self,
        routes: &Routes,
        t: Taken,
        sender: Sender,
        request: Request<ReqBody>,
    ) -> Response<RespBody> {
        let (names, method) = (&routes.http.names, request.method().clone());
        let reused = sender.is_reused();
        let timeout = routes.http.config.response_timeout;
        // The worker's count is the truth for its instances (edges do not count them).
        let (app, metrics) = (&t.app.app, &t.app.metrics);
        let inst = &app.instances[t.index];
        match tokio::time::timeout(timeout, sender.send(request)).await {
            Err(_) => {
                outlier::failed(app, inst, metrics, OutlierReason::Timeout);
                let mut resp = ProxyError::UpstreamTimeout.response(names);
                resp.headers_mut()
                    .insert(FAILED, HeaderValue::from_static("timeout"));
                resp
            }
            Ok(Err(SendError::Unsent)) => refuse(&self.shared, RetryElsewhere::StaleConnection),
            Ok(Err(SendError::Failed(e))) => {
                // The edge's stream body failed (its client's malformed body, a client gone, a
                // body over the limit): not the instance's fault, so no outlier count.
                let limit = routes.http.config.max_request_body;
                if let Some(client) = e.body_error().and_then(|b| ProxyError::from_body(b, limit)) {
                    return client.response(names);
                }
                if retry_reason(&e, reused, &method).is_some() {
                    // The instance provably did not process it.
                    return refuse(&self.shared, RetryElsewhere::NotProcessed);
                }
                outlier::failed(app, inst, metrics, OutlierReason::Reset);
                let mut resp = ProxyError::Upstream(Box::new(Cause::Instance(e))).response(names);
                resp.headers_mut()
                    .insert(FAILED, HeaderValue::from_static("reset"));
                resp
            }
            Ok(Ok(mut resp)) => {
                outlier::answered(app, inst, metrics, resp.status());
                // Only the worker speaks these to the edge: an instance that sent one would
                // have the edge send a request it processed elsewhere.
                let h = resp.headers_mut();
                h.remove(RETRY_ELSEWHERE);
                h.remove(FAILED);
                response_back(resp, &t.app.metrics, t.slots)
            }
        }
    }
}

/// A protocol switch carried from an edge: tunnel once the instance agrees.
async fn switch(
    routes: &Routes,
    t: Taken,
    upgrade: Upgrade,
    sender: Sender,
    request: Request<ReqBody>,
) -> Response<RespBody> {
    let app = upgrade::AppRef {
        name: &t.app.app.name,
        metrics: &t.app.metrics,
    };
    let outcome = Outcome::default();
    let sent = upgrade::forward(
        upgrade,
        sender,
        request,
        app,
        outcome,
        t.slots,
        Leg::FromEdge,
    );
    let names = &routes.http.names;
    match sent.await {
        upgrade::Forwarded::Answer(answer) => match *answer {
            Ok((resp, _)) => resp,
            Err((e, _)) => ProxyError::from(e).response(names),
        },
        // Only an edge's leg to a worker is refused this way.
        upgrade::Forwarded::Refused { reason, .. } => {
            ProxyError::Upstream(Box::new(Cause::Refused(reason))).response(names)
        }
    }
}

/// The app (its HTTP service on the edge port the client came to) and the index of the local
/// instance a stream names, or why not.
fn find(
    routes: &Routes,
    app: &str,
    instance: &str,
    edge_port: u16,
) -> Result<(Arc<HttpApp>, usize), RetryElsewhere> {
    let Some(http_app) = routes.http_app_on(app, edge_port) else {
        return Err(RetryElsewhere::UnknownApp);
    };
    let found =
        super::admit::own_instance(routes.snapshot.as_deref(), Some(&http_app.app), instance);
    match found {
        Ok((_, index)) => Ok((http_app.clone(), index)),
        Err(why) => Err(why.into()),
    }
}

#[cfg(test)]
mod tests;
