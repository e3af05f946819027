//! Every response the proxy makes itself goes through here: one exhaustive mapping from a typed
//! error to a status and a stable code (`<P>-Error` header, short body, log field, metric).

use crate::admit::AdmitError;
use crate::instance::attempt::Cause;
use crate::instance::body::{BodyError, RespBody};
use crate::instance::headers::Prefixed;
use crate::instance::upgrade::SwitchFailed;
use crate::policy::Refusal;
use anyedge_core::Fault;
use anyedge_telemetry::ErrorCode;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use std::sync::Arc;

/// What went wrong with one request, from the proxy's point of view.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no app serves this host on this port")]
    UnknownHost,
    #[error("the request has no host")]
    MissingHost,
    #[error("TLS was negotiated for another app than this Host names")]
    Misdirected,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request body is over the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("no instance of the app could be reached: {0}")]
    NoInstance(Box<Cause>),
    #[error("the instance failed: {0}")]
    Upstream(Box<Cause>),
    #[error("the instance did not answer in time")]
    UpstreamTimeout,
    #[error("{0}")]
    Admit(AdmitError),
    #[error("the replay chain is longer than the proxy allows")]
    ReplayLimit,
    #[error("the replay could not be carried out: {0}")]
    ReplayFailed(ReplayFailure),
    /// The app's traffic policy: an access rule or a rate limit (`policy.rs`).
    #[error("{0}")]
    Refused(Refusal),
}

/// Why a replay (or its fallback) could not be carried out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayFailure {
    #[error("{0}")]
    Placement(AdmitError),
    #[error("{0}")]
    Cause(Box<Cause>),
    #[error("no app `{0}` serves HTTP here")]
    NoApp(Arc<str>),
    #[error("app `{app}` does not accept replays from `{from}`")]
    NotAccepted { app: Arc<str>, from: Arc<str> },
    #[error("app `{app}`: {error}")]
    TargetAdmit { app: Arc<str>, error: AdmitError },
}

impl ReplayFailure {
    fn fault(&self) -> Fault {
        match self {
            ReplayFailure::Placement(e) | ReplayFailure::TargetAdmit { error: e, .. } => {
                admit_fault(*e)
            }
            ReplayFailure::Cause(c) => c.fault(),
            ReplayFailure::NoApp(_) | ReplayFailure::NotAccepted { .. } => Fault::Config,
        }
    }
}

/// No slot: the app's own limits on this node, or no instance that can take it.
fn admit_fault(e: AdmitError) -> Fault {
    match e {
        AdmitError::Overloaded | AdmitError::QueueTimeout => Fault::Node,
        AdmitError::Unavailable | AdmitError::StartFailed => Fault::Instance,
        AdmitError::ForcedUnavailable => Fault::Client,
    }
}

impl ProxyError {
    /// The answer when the request's body is what failed: the client's fault (a body over
    /// `limit`, or one that could not be read: a malformed chunk, a client gone), not the
    /// instance's; `None` for a copy stopped because the request went elsewhere.
    pub fn from_body(e: &BodyError, limit: u64) -> Option<ProxyError> {
        match e {
            BodyError::TooLarge { .. } => Some(ProxyError::BodyTooLarge { limit }),
            BodyError::Read(_) => {
                Some(ProxyError::BadRequest("the request body could not be read"))
            }
            BodyError::Superseded | BodyError::Spill(_) => None,
        }
    }
}

impl From<SwitchFailed> for ProxyError {
    fn from(e: SwitchFailed) -> ProxyError {
        match e {
            SwitchFailed::NotAnUpgrade => ProxyError::BadRequest("not an upgrade"),
            SwitchFailed::Cause(c) => ProxyError::Upstream(c),
        }
    }
}

impl ProxyError {
    /// Whose fault it is (logged with the code; the code itself says what happened).
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::UnknownHost
            | ProxyError::MissingHost
            | ProxyError::Misdirected
            | ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::Refused(_) => Fault::Client,
            ProxyError::NoInstance(c) | ProxyError::Upstream(c) => c.fault(),
            ProxyError::UpstreamTimeout | ProxyError::ReplayLimit => Fault::Instance,
            ProxyError::Admit(e) => admit_fault(*e),
            ProxyError::ReplayFailed(f) => f.fault(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost => StatusCode::NOT_FOUND,
            ProxyError::MissingHost | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoInstance(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Admit(_) | ProxyError::ReplayFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ReplayLimit => StatusCode::BAD_GATEWAY,
            ProxyError::Refused(Refusal::Denied { .. }) => StatusCode::FORBIDDEN,
            ProxyError::Refused(Refusal::Limited { .. }) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ProxyError::UnknownHost => ErrorCode::UnknownHost,
            ProxyError::MissingHost | ProxyError::BadRequest(_) => ErrorCode::BadRequest,
            ProxyError::Misdirected => ErrorCode::Misdirected,
            ProxyError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            ProxyError::NoInstance(_) => ErrorCode::NoInstance,
            ProxyError::Upstream(_) => ErrorCode::UpstreamError,
            ProxyError::UpstreamTimeout => ErrorCode::UpstreamTimeout,
            ProxyError::Admit(e) => e.code(),
            ProxyError::ReplayLimit => ErrorCode::ReplayLimit,
            ProxyError::ReplayFailed(_) => ErrorCode::ReplayFailed,
            ProxyError::Refused(r) => r.code(),
        }
    }

    /// The response the client gets: status, `<P>-Error: <code>`, and a one-line body.
    pub fn response(&self, names: &Prefixed) -> Response<RespBody> {
        let code = self.code().as_str();
        let body = format!("{code}: {self}\n");
        let mut resp = Response::new(RespBody::full(Bytes::from(body)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(names.error.clone(), HeaderValue::from_static(code));
        match self {
            ProxyError::Refused(Refusal::Limited { retry_after, .. }) => {
                h.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract: statuses and codes do not change without a decision.
    #[test]
    fn every_error_has_its_status_and_code() {
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (ProxyError::UnknownHost, 404, "unknown_host"),
            (ProxyError::MissingHost, 400, "bad_request"),
            (ProxyError::Misdirected, 421, "misdirected_request"),
            (ProxyError::BadRequest("x"), 400, "bad_request"),
            (ProxyError::BodyTooLarge { limit: 1 }, 413, "body_too_large"),
            (
                ProxyError::NoInstance(Box::new(Cause::BodyNotKept)),
                503,
                "no_instance_available",
            ),
            (
                ProxyError::Upstream(Box::new(Cause::BodyNotKept)),
                502,
                "upstream_error",
            ),
            (ProxyError::UpstreamTimeout, 504, "upstream_timeout"),
            (
                ProxyError::Refused(Refusal::Denied {
                    rule: "not_allowed".into(),
                }),
                403,
                "access_denied",
            ),
            (
                ProxyError::Refused(Refusal::Limited {
                    scope: anyedge_catalog::LimitScope::Client,
                    retry_after: 3,
                }),
                429,
                "rate_limited",
            ),
            (
                ProxyError::Admit(AdmitError::StartFailed),
                503,
                "instance_start_failed",
            ),
        ];
        let names = Prefixed::new("anyedge");
        for (e, status, code) in cases {
            let _ = e.fault();
            let resp = e.response(&names);
            assert_eq!(resp.status().as_u16(), status, "{e:?}");
            assert_eq!(resp.headers()["anyedge-error"], code, "{e:?}");
            if status == 429 {
                assert_eq!(resp.headers()["retry-after"], "3");
            }
        }
    }
}
