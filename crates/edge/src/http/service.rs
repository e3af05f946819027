//! The service hyper calls for each request. It never fails: every error becomes a response in
//! `error.rs`. Route by host, check the request, place it on an instance (carrying it to another
//! when a connection cannot be made), forward, and stream the response back.

use super::body::{ReqBody, RespBody};
use super::error::ProxyError;
use super::headers::{self, ClientInfo};
use super::upgrade::{self, Upgrade};
use super::upstream::{SendError, Sender, Target, UpstreamError};
use crate::routes::{HttpApp, HttpPort, HttpSettings};
use crate::Shared;
use http::header::{CONTENT_LENGTH, HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub(crate) struct ProxyService {
    shared: Arc<Shared>,
    port: Arc<HttpPort>,
    client: Arc<ClientInfo>,
    settings: Arc<HttpSettings>,
    /// The TLS SNI of the connection, lower-cased.
    sni: Option<Arc<str>>,
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// What one request did, for its log line and metrics.
pub(super) struct Outcome {
    pub instance: Option<anyedge_core::InstanceId>,
    pub attempts: u32,
    pub code: Option<&'static str>,
}

impl ProxyService {
    pub fn new(
        shared: Arc<Shared>,
        port: Arc<HttpPort>,
        client: Arc<ClientInfo>,
        settings: Arc<HttpSettings>,
        sni: Option<Arc<str>>,
    ) -> Self {
        ProxyService {
            shared,
            port,
            client,
            settings,
            sni,
        }
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<RespBody> {
        let started = Instant::now();
        let request_id = headers::request_id(&self.settings.region_name);
        let (app, result) = match self.route(&req) {
            Ok(app) => {
                let app = app.clone();
                let result = self.proxy(&app, req, &request_id).await;
                (Some(app), result)
            }
            Err(e) => (
                None,
                Err((
                    e,
                    Outcome {
                        instance: None,
                        attempts: 0,
                        code: None,
                    },
                )),
            ),
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
                    bytes_out,
                    first_byte_ms = elapsed.as_secs_f64() * 1e3,
                    total_ms = started.elapsed().as_secs_f64() * 1e3,
                );
            }));
        }
        resp
    }

    /// The app for this request's host, with the checks that need only the request head.
    fn route(&self, req: &Request<Incoming>) -> Result<&Arc<HttpApp>, ProxyError> {
        let host = request_host(req).ok_or(ProxyError::MissingHost)?;
        let app = self.port.app(&host).ok_or(ProxyError::UnknownHost)?;
        if let Some(sni) = &self.sni {
            // A connection set up for one app may not carry another app's requests.
            let same = self
                .port
                .app(sni)
                .is_some_and(|a| Arc::ptr_eq(&a.app, &app.app));
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
    ) -> Result<(Response<RespBody>, Outcome), (ProxyError, Outcome)> {
        let mut outcome = Outcome {
            instance: None,
            attempts: 0,
            code: None,
        };
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
        headers::strip_hop_by_hop(&mut parts.headers, matches!(upgrade, Upgrade::Http1 { .. }));
        let via = if parts.version == http::Version::HTTP_2 {
            "2 anyedge"
        } else {
            "1.1 anyedge"
        };
        headers::add_forwarding(
            &mut parts.headers,
            &self.settings.names,
            &self.client,
            &self.settings.region,
            request_id,
            via,
        );
        if !parts.headers.contains_key(HOST) {
            if let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
            {
                parts.headers.insert(HOST, v);
            }
        }
        let h2_backend = app.service().http_options.h2_backend && matches!(upgrade, Upgrade::None);
        upstream_uri(&mut parts, h2_backend);
        let body = ReqBody::new(
            body,
            self.settings.config.replay_body_limit,
            max_body,
            app.metrics.clone(),
        );
        let mut req = Some(Request::from_parts(parts, body));
        let instances = &app.app.instances;
        let mut tried = vec![false; instances.len()];
        let mut last_error = None;
        let service = app.service();
        for _ in 0..instances.len() {
            let Some(index) = crate::connect::choose(instances, &tried) else {
                break;
            };
            tried[index] = true;
            outcome.attempts += 1;
            let inst = &instances[index];
            let _inflight = inst.live.inflight.acquire();
            let Some(port) = inst.address.port.or(service.internal_port) else {
                continue;
            };
            let target = Target {
                host: &inst.address.host,
                port,
                h2: h2_backend,
                connect_timeout: self.shared.routes.load().limits.connect_timeout,
                idle_timeout: self.settings.config.upstream_idle_timeout,
            };
            let pool = &app.pools[index];
            let sender = match upgrade {
                Upgrade::None => pool.sender(&target, &self.shared.resolver).await,
                _ => pool.fresh(&target, &self.shared.resolver).await,
            };
            let sender = match sender {
                Ok(s) => s,
                Err(e) => {
                    inst.live.connect_failed(Instant::now());
                    if let UpstreamError::Connect(a) = &e {
                        app.metrics.connect_failure(a.reason());
                    }
                    tracing::info!(instance = %inst.id, error = %e, "instance unreachable; trying another");
                    last_error = Some(e.to_string());
                    continue;
                }
            };
            inst.live.connect_succeeded();
            outcome.instance = Some(inst.id.clone());
            let Some(request) = req.take() else { break };
            return match upgrade {
                Upgrade::None => {
                    self.forward(sender, request, pool, &target, app, outcome)
                        .await
                }
                u => upgrade::forward(u, sender, request, app, outcome).await,
            };
        }
        Err((
            ProxyError::NoInstance(last_error.unwrap_or_else(|| "the app has no instances".into())),
            outcome,
        ))
    }

    async fn forward(
        &self,
        sender: Sender,
        req: Request<ReqBody>,
        pool: &Arc<super::upstream::UpstreamPool>,
        target: &Target<'_>,
        app: &Arc<HttpApp>,
        outcome: Outcome,
    ) -> Result<(Response<RespBody>, Outcome), (ProxyError, Outcome)> {
        let timeout = self.settings.config.response_timeout;
        let reused = sender.is_reused();
        let first = tokio::time::timeout(timeout, sender.send(req)).await;
        let sent = match first {
            Err(_) => return Err((ProxyError::UpstreamTimeout, outcome)),
            Ok(Err(SendError::Unsent(req))) if reused => {
                // The pooled connection was closed under us before anything was written.
                let fresh = match pool.fresh(target, &self.shared.resolver).await {
                    Ok(s) => s,
                    Err(e) => return Err((ProxyError::Upstream(e.to_string()), outcome)),
                };
                match tokio::time::timeout(timeout, fresh.send(*req)).await {
                    Err(_) => return Err((ProxyError::UpstreamTimeout, outcome)),
                    Ok(r) => r,
                }
            }
            Ok(r) => r,
        };
        match sent {
            Ok((resp, pool_return)) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, false);
                let body = RespBody::upstream(body, pool_return, app.metrics.clone());
                Ok((Response::from_parts(parts, body), outcome))
            }
            Err(SendError::Unsent(_)) => Err((
                ProxyError::Upstream("connection closed before the request was sent".into()),
                outcome,
            )),
            Err(SendError::Failed(e)) => {
                let too_large = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<super::body::BodyError>())
                    .is_some_and(|b| matches!(b, super::body::BodyError::TooLarge { .. }));
                if too_large {
                    let limit = self.settings.config.max_request_body;
                    return Err((ProxyError::BodyTooLarge { limit }, outcome));
                }
                Err((ProxyError::Upstream(e.to_string()), outcome))
            }
        }
    }
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

/// HTTP/1.1 instances get origin-form (`/path?q`); an HTTP/2 instance gets the full URI with
/// the client's host as authority.
fn upstream_uri(parts: &mut http::request::Parts, h2: bool) {
    if !h2 && parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        parts.version = http::Version::HTTP_11;
        return;
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if h2 {
        parts.version = http::Version::HTTP_2;
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(host.as_str())
            .path_and_query(path.as_str())
            .build()
        {
            parts.uri = uri;
        }
        parts.headers.remove(HOST);
    } else {
        parts.version = http::Version::HTTP_11;
        if let Ok(uri) = Uri::try_from(path) {
            parts.uri = uri;
        }
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
