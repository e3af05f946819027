//! How the edge carries one attempt: on a hyper connection to an instance on this node (or, for
//! a protocol switch, to a worker), or as a stream on a backhaul link to the worker that runs
//! the instance. One send for both, and one answer to "was it written, and may it be retried".

use crate::backhaul::streams;
use crate::instance::attempt::{self, h2_retry_reason, Cause};
use crate::instance::body::{ReqBody, UpBody};
use crate::instance::pool::{SendError, Sender};
use anyedge_telemetry::RetryReason;
use http::{Request, Response};

/// A connection ready to carry one request.
pub(crate) enum Carrier {
    /// A pooled connection: an instance on this node (our HTTP/1.1 client or hyper's HTTP/2
    /// one), or a protocol switch to a worker.
    Hyper(Sender),
    /// A backhaul stream to the instance's worker.
    Stream(streams::Conn),
}

/// A send that failed.
pub(crate) enum CarryError {
    /// Nothing of the request was written.
    Unsent,
    /// (At least part of) the request was written: an instance or stream failure.
    Failed(Cause),
}

impl Carrier {
    pub fn is_reused(&self) -> bool {
        matches!(self, Carrier::Hyper(s) if s.is_reused())
    }

    /// Send; on success an HTTP/1.1 connection rides along with the response body and goes back
    /// to its pool when the body ends.
    pub async fn send(self, req: Request<ReqBody>) -> Result<Response<UpBody>, CarryError> {
        match self {
            Carrier::Hyper(sender) => sender.send(req).await.map_err(|e| match e {
                SendError::Unsent => CarryError::Unsent,
                SendError::Failed(f) => CarryError::Failed(Cause::Instance(f)),
            }),
            Carrier::Stream(conn) => match conn.send(req).await {
                Ok(resp) => Ok(resp.map(UpBody::Stream)),
                Err(streams::SendFailed::Unsent) => Err(CarryError::Unsent),
                Err(streams::SendFailed::Failed(e)) => Err(CarryError::Failed(Cause::Stream(e))),
            },
        }
    }
}

/// Whether a failed send may go to an instance again ([`attempt::retry_reason`]; over
/// backhaul, only when the worker refused the stream or went away above it).
pub(crate) fn retry_reason(e: &Cause, reused: bool, method: &http::Method) -> Option<RetryReason> {
    match e {
        Cause::Instance(f) => attempt::retry_reason(f, reused, method),
        Cause::Stream(e) => e.h2().and_then(h2_retry_reason),
        Cause::Unreachable(_)
        | Cause::Refused(_)
        | Cause::BodyNotKept
        | Cause::TimedOut
        | Cause::WorkerReset => None,
    }
}
