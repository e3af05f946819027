//! One attempt to carry a request to an instance, as both roles make it: the request's URI
//! and version for the instance, what a request did (its [`Outcome`], for the log line and
//! metrics), why an attempt failed ([`Cause`]: whose fault, and whether another instance may
//! take the request), and whether a failed send may be tried again ([`retry_reason`]).

use super::body::{RespBody, Slots, UpBody};
use super::h2body::StreamError;
use super::headers;
use super::pool::{Failure, UpstreamError};
use anyedge_backhaul::retry::RetryElsewhere;
use anyedge_core::Fault;
use anyedge_telemetry::AppMetrics;
use anyedge_telemetry::RetryReason;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Response, Uri};
use std::sync::Arc;

/// What one request did, for its log line and metrics.
#[derive(Default)]
pub(crate) struct Outcome {
    pub instance: Option<anyedge_core::InstanceId>,
    pub attempts: u32,
    pub replays: u32,
    pub code: Option<&'static str>,
    /// Whose fault the error was, when the proxy answered with one.
    pub fault: Option<Fault>,
    /// From arrival until the first instance was chosen (the app's queue included).
    pub queue: std::time::Duration,
    /// Getting instance connections (pooled or new), over all attempts.
    pub connect: std::time::Duration,
    /// The `P-Route` text of a request the proxy answered with an error, when a valid
    /// debug token asked for the trace (a refusal by the traffic policy, a skipped retry).
    /// A thin box (8 bytes, `Box<str>` is 16): every request's state holds this field.
    #[allow(clippy::box_collection)] // on purpose: see above
    pub route: Option<Box<String>>,
}

/// Why an attempt to carry a request failed, typed down to the error map: the access log's
/// error field, `P-Error` and the log line come from it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Cause {
    /// No connection to the instance (or its worker) could be made: nothing was sent.
    #[error(transparent)]
    Unreachable(#[from] UpstreamError),
    /// The instance failed a request that was (at least partly) written to it.
    #[error(transparent)]
    Instance(#[from] Failure),
    /// The backhaul stream to the instance's worker failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The worker did not give the request to the instance.
    #[error("worker refused: {0}")]
    Refused(RetryElsewhere),
    /// The request's body went past `replay_body_limit`, so it cannot be sent again.
    #[error("the request body is larger than replay_body_limit")]
    BodyNotKept,
    /// No response head within `response_timeout` (the request was sent: the instance may
    /// have processed it).
    #[error("the instance did not answer in time")]
    TimedOut,
    /// The instance's worker reported that its connection failed after the request was
    /// written (the request may have been processed).
    #[error("the instance's connection failed before it answered (its worker said so)")]
    WorkerReset,
}

impl Cause {
    /// Whose fault the failure is.
    pub fn fault(&self) -> Fault {
        match self {
            Cause::Unreachable(_) | Cause::Instance(_) | Cause::TimedOut | Cause::WorkerReset => {
                Fault::Instance
            }
            Cause::Stream(StreamError::Body(_)) => Fault::Client,
            Cause::Stream(_) => Fault::Worker,
            Cause::Refused(r) => refusal_fault(*r),
            Cause::BodyNotKept => Fault::Config,
        }
    }

    /// The request body's own error, when the body is what failed rather than the instance.
    pub fn body_error(&self) -> Option<&super::body::BodyError> {
        match self {
            Cause::Instance(f) => f.body_error(),
            Cause::Stream(StreamError::Body(b)) => Some(b),
            _ => None,
        }
    }

    /// Whether another instance may take the request: nothing reached this one.
    pub fn retry_elsewhere(&self) -> bool {
        matches!(self, Cause::Unreachable(_) | Cause::Refused(_))
    }
}

/// Whose fault a worker's refusal is (`RetryElsewhere` says why; this node's catalog being
/// behind the worker's is this node's).
fn refusal_fault(r: RetryElsewhere) -> Fault {
    use anyedge_backhaul::retry::Fault as Why;
    match r.fault() {
        Why::Instance => Fault::Instance,
        Why::Load | Why::Worker | Why::Power => Fault::Worker,
        Why::Catalog | Why::Edge | Why::Unknown => Fault::Node,
    }
}

/// Whether a failed send may go to an instance again: only when the instance provably did not
/// process it (HTTP/2 REFUSED_STREAM or a GOAWAY above the stream), or an idempotent request on
/// a reused HTTP/1.1 connection that failed before any response byte (the keep-alive race).
pub(crate) fn retry_reason(
    e: &Failure,
    reused: bool,
    method: &http::Method,
) -> Option<RetryReason> {
    let idempotent = method.is_idempotent();
    let e = match e {
        Failure::H1(e) => {
            return (reused && idempotent && e.closed_before_response())
                .then_some(RetryReason::StaleConnection)
        }
        Failure::Http(e) => e,
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2_retry_reason(h2);
        }
        source = s.source();
    }
    // hyper reports a connection closed before any response byte as an incomplete message.
    (reused && idempotent && (e.is_incomplete_message() || e.is_closed() || is_reset(e)))
        .then_some(RetryReason::StaleConnection)
}

/// An HTTP/2 stream's failure: retried only when the peer says it did not process the stream.
pub(crate) fn h2_retry_reason(e: &h2::Error) -> Option<RetryReason> {
    if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        return Some(RetryReason::RefusedStream);
    }
    (e.is_go_away() && e.is_remote()).then_some(RetryReason::GoAway)
}

fn is_reset(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

/// A request without `Host` (HTTP/2, or an HTTP/1.1 request in absolute form without one) gets
/// its authority as `Host`, which HTTP/1.1 instances need.
pub(crate) fn fill_host(headers: &mut HeaderMap, uri: &Uri) {
    if !headers.contains_key(HOST) {
        set_host_from_authority(headers, uri);
    }
}

/// An absolute-form target's authority (or HTTP/2's `:authority`) replaces `Host`, so the
/// instance sees the name the request was routed by; without one, `Host` stays.
pub(crate) fn set_host_from_authority(headers: &mut HeaderMap, uri: &Uri) {
    if let Some(v) = uri
        .authority()
        .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
    {
        headers.insert(HOST, v);
    }
}

/// An instance's response on its way to the client (or the edge): hop-by-hop headers off, the
/// body counted, and the request's slots held until it has been sent.
pub(crate) fn response_back(
    resp: Response<UpBody>,
    metrics: &Arc<AppMetrics>,
    slots: Slots,
) -> Response<RespBody> {
    let (mut parts, body) = resp.into_parts();
    // Our HTTP/1.1 client has left them out already.
    if !matches!(body, UpBody::H1(_)) {
        headers::strip_hop_by_hop(&mut parts.headers, false);
    }
    let mut body = RespBody::upstream(body, metrics.clone());
    body.hold(slots);
    Response::from_parts(parts, body)
}

/// HTTP/1.1 instances get origin-form (`/path?q`); an HTTP/2 instance gets the full URI with
/// the client's host as authority.
pub(crate) fn upstream_uri(parts: &mut http::request::Parts, h2: bool) {
    if !h2 && parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        parts.version = http::Version::HTTP_11;
        return;
    }
    // Rebuilt from the parts already parsed: the path is neither copied nor parsed again.
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if h2 {
        parts.version = http::Version::HTTP_2;
        let host = parts.headers.remove(HOST);
        let authority = host
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority);
    } else {
        parts.version = http::Version::HTTP_11;
        uri.scheme = None;
        uri.authority = None;
    }
    if let Ok(rebuilt) = Uri::from_parts(uri) {
        parts.uri = rebuilt;
    }
}

#[cfg(test)]
mod tests {
    use super::upstream_uri;

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(http::header::HOST, h);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn instances_get_origin_form_or_the_full_uri_for_h2() {
        let mut p = parts("http://example.com/a/b?q=1", None);
        upstream_uri(&mut p, false);
        assert_eq!(p.uri, "/a/b?q=1");
        assert_eq!(p.version, http::Version::HTTP_11);

        let mut p = parts("/a/b?q=1", Some("example.com:8080"));
        upstream_uri(&mut p, false);
        assert_eq!(p.uri, "/a/b?q=1");
        assert!(p.headers.contains_key(http::header::HOST));

        let mut p = parts("/a/b?q=1", Some("example.com:8080"));
        upstream_uri(&mut p, true);
        assert_eq!(p.uri, "http://example.com:8080/a/b?q=1");
        assert_eq!(p.version, http::Version::HTTP_2);
        assert!(
            !p.headers.contains_key(http::header::HOST),
            "h2 carries it as :authority"
        );

        let mut p = parts("/", Some("bad host"));
        upstream_uri(&mut p, true);
        assert_eq!(p.uri, "http://localhost/");
    }
}
