//! How the edge carries one attempt: on a hyper connection to an instance on this node (or, for
//! a protocol switch, to a worker), or as a stream on a backhaul link to the worker that runs
//! the instance. One send for both, and one answer to "was it written, and may it be retried".

use crate::backhaul::streams;
use crate::instance::attempt::{self, h2_retry_reason, Cause};
use crate::instance::body::{ReqBody, UpBody};
use crate::instance::pool::{Failure, PoolReturn, Sender};
use anyedge_telemetry::RetryReason;
use http::{Request, Response};

/// A connection ready to carry one request.
pub(crate) enum Carrier {
    /// hyper's client: an instance on this node, or a protocol switch to a worker.
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
    pub async fn send(
        self,
        req: Request<ReqBody>,
    ) -> Result<(Response<UpBody>, Option<PoolReturn>), CarryError> {
        match self {
            // hyper's senders are matched here, not through `Sender::send`: one future less
            // to build and move per request.
            Carrier::Hyper(Sender::H1 {
                mut sender, pool, ..
            }) => {
                let whole = req.body().sent_whole();
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let back = PoolReturn::new(sender, pool, whole);
                        Ok((resp.map(UpBody::Left), Some(back)))
                    }
                    Err(e) => Err(unsent_or_failed(e)),
                }
            }
            Carrier::Hyper(Sender::H2(mut sender)) => match sender.try_send_request(req).await {
                Ok(resp) => Ok((resp.map(UpBody::Left), None)),
                Err(e) => Err(unsent_or_failed(e)),
            },
            Carrier::Stream(conn) => match conn.send(req).await {
                Ok(resp) => Ok((resp.map(UpBody::Right), None)),
                Err(streams::SendFailed::Unsent) => Err(CarryError::Unsent),
                Err(streams::SendFailed::Failed(e)) => Err(CarryError::Failed(Cause::Stream(e))),
            },
        }
    }
}

/// A request hyper handed back was never written; any other failure was.
fn unsent_or_failed(mut e: hyper::client::conn::TrySendError<Request<ReqBody>>) -> CarryError {
    match e.take_message() {
        Some(_) => CarryError::Unsent,
        None => CarryError::Failed(Cause::Instance(Failure::Http(e.into_error()))),
    }
}

/// Whether a failed send may go to an instance again ([`attempt::retry_reason`]; over
/// backhaul, only when the worker refused the stream or went away above it).
pub(crate) fn retry_reason(e: &Cause, reused: bool, method: &http::Method) -> Option<RetryReason> {
    match e {
        Cause::Instance(f) => attempt::retry_reason(f, reused, method),
        Cause::Stream(e) => e.h2().and_then(h2_retry_reason),
        Cause::Unreachable(_) | Cause::Refused(_) | Cause::BodyNotKept => None,
    }
}
