//! The worker's side of HTTP backhaul: each stream names an app and one of this node's
//! instances. The worker is the truth about its instances: it checks the instance exists here
//! and belongs to the app, takes its own slots (the app's budget on this node, the instance's
//! hard limit), connects, and forwards. Anything that stops the request before the instance
//! sees it is answered 503 with `anyedge-retry-elsewhere: <reason>` before any of the body is
//! read, and the edge places the request again without this instance.

use super::feed::FeedBody;
use crate::error::ProxyError;
use crate::instance::attempt::{retry_reason, upstream_uri, Cause, Outcome};
use crate::instance::body::{ReqBody, RespBody, Slots, UpBody};
use crate::instance::headers;
use crate::instance::pool::{SendError, Target};
use crate::instance::upgrade::{self, Leg, Upgrade};
use crate::routes::HttpApp;
use crate::Shared;
use anyedge_backhaul::retry::RetryElsewhere;
use anyedge_backhaul::stream::{self, parse_stream};

/// The stream headers of `anyedge_backhaul::stream`.
const STREAM: http::HeaderName = http::HeaderName::from_static(stream::STREAM);
const FEED: http::HeaderName = http::HeaderName::from_static(stream::FEED);
const RETRY_ELSEWHERE: http::HeaderName = http::HeaderName::from_static(stream::RETRY_ELSEWHERE);
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
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

impl hyper::service::Service<Request<Incoming>> for WorkerService {
    type Response = Response<WorkerBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<WorkerBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.headers().contains_key(FEED) {
                let body = super::feed::stream(&this.shared);
                return Ok(Response::new(WorkerBody::Right(body)));
            }
            Ok(this.handle(req).await.map(WorkerBody::Left))
        })
    }
}

/// Why a stream was not carried to its instance (the `anyedge-retry-elsewhere` value).
fn refuse(shared: &Shared, reason: RetryElsewhere) -> Response<RespBody> {
    shared.metrics.backhaul.refused(reason.as_str());
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut()
        .insert(RETRY_ELSEWHERE, HeaderValue::from_static(reason.as_str()));
    resp
}

impl WorkerService {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<RespBody> {
        let shared = &self.shared;
        let routes = shared.routes.load_full();
        // The stream's metadata: its target, and the client, whose forwarding headers are
        // written here.
        let h = req.headers_mut();
        let stream = h.remove(STREAM);
        let parsed = stream
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(parse_stream);
        let found = match parsed {
            None => Err(RetryElsewhere::BadRequest),
            Some((app, instance, client)) => find(&routes, app, instance).inspect(|_| {
                headers::add_client(h, &routes.http.names, &client);
            }),
        };
        let (app, index) = match found {
            Ok(found) => found,
            Err(reason) => {
                tracing::info!(edge = %self.edge, reason = reason.as_str(), "backhaul stream refused");
                return refuse(shared, reason);
            }
        };
        shared
            .metrics
            .backhaul
            .streams
            .fetch_add(1, Ordering::Relaxed);
        let (app_slot, slot) = match super::admit::admit(shared, &app.app, index) {
            Ok(slots) => slots,
            Err(why) => return refuse(shared, why.into()),
        };
        let inst = &app.app.instances[index];
        if !req.headers().contains_key(HOST) {
            if let Some(v) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
            {
                req.headers_mut().insert(HOST, v);
            }
        }
        let upgrade = match upgrade::classify(&mut req) {
            Ok(u) => u,
            Err(_) => return refuse(shared, RetryElsewhere::BadRequest),
        };
        let service = app.service();
        let Some(port) = inst.address.port.or(service.internal_port) else {
            return refuse(shared, RetryElsewhere::NoService);
        };
        let h2 = service.http_options.h2_backend && matches!(upgrade, Upgrade::None);
        let http = &routes.http.config;
        let target = Target {
            host: &inst.address.host,
            port,
            h2,
            connect_timeout: routes.limits.connect_timeout,
            idle_timeout: http.upstream_idle_timeout,
        };
        let pool = &app.pools[index];
        let sender = if matches!(upgrade, Upgrade::None) {
            pool.sender(&target, &shared.resolver).await
        } else {
            pool.fresh(&target, &shared.resolver).await
        };
        let sender = match sender {
            Ok(s) => s,
            Err(e) => {
                inst.live.connect_failed(Instant::now());
                tracing::info!(instance = %inst.id, error = %e, "instance unreachable; the edge will place elsewhere");
                return refuse(shared, RetryElsewhere::ConnectFailed);
            }
        };
        inst.live.connect_succeeded();
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        upstream_uri(&mut parts, h2);
        // Streamed as it comes: retries are the edge's (it keeps the body when it may need it).
        let body = ReqBody::new(body, 0, http.max_request_body, app.metrics.clone());
        let request = Request::from_parts(parts, body);
        let slots = Slots::new(app_slot, slot);
        let names = &routes.http.names;
        if !matches!(upgrade, Upgrade::None) {
            // Boxed: upgrades are rare; inline, their state would enlarge every stream's future.
            let sent = Box::pin(upgrade::forward(
                upgrade,
                sender,
                request,
                upgrade::AppRef {
                    name: &app.app.name,
                    metrics: &app.metrics,
                },
                Outcome::default(),
                slots,
                Leg::FromEdge,
            ))
            .await;
            return match sent {
                upgrade::Forwarded::Answer(Ok((resp, _))) => resp,
                upgrade::Forwarded::Answer(Err((e, _))) => ProxyError::from(e).response(names),
                // Only an edge's leg to a worker is refused this way.
                upgrade::Forwarded::Refused { reason, .. } => {
                    ProxyError::Upstream(Box::new(Cause::Refused(reason))).response(names)
                }
            };
        }
        let reused = sender.is_reused();
        let sent = tokio::time::timeout(http.response_timeout, sender.send(request)).await;
        match sent {
            Err(_) => ProxyError::UpstreamTimeout.response(names),
            Ok(Err(SendError::Unsent)) => refuse(shared, RetryElsewhere::StaleConnection),
            Ok(Err(SendError::Failed(e))) => {
                if retry_reason(&e, reused, &method).is_some() {
                    // The instance provably did not process it.
                    return refuse(shared, RetryElsewhere::NotProcessed);
                }
                ProxyError::Upstream(Box::new(Cause::Instance(e))).response(names)
            }
            Ok(Ok((resp, pool_return))) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, false);
                let mut body =
                    RespBody::upstream(UpBody::Left(body), pool_return, app.metrics.clone());
                body.hold(slots);
                Response::from_parts(parts, body)
            }
        }
    }
}

/// The app and the index of the local instance a stream names, or why not.
fn find(
    routes: &crate::routes::Routes,
    app: &str,
    instance: &str,
) -> Result<(Arc<HttpApp>, usize), RetryElsewhere> {
    let Some(http_app) = routes.http_app(app) else {
        return Err(RetryElsewhere::UnknownApp);
    };
    let found =
        super::admit::own_instance(routes.snapshot.as_deref(), Some(&http_app.app), instance);
    match found {
        Ok((_, index)) => Ok((http_app.clone(), index)),
        Err(why) => Err(why.into()),
    }
}
