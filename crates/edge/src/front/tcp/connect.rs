//! Raw TCP from a client, placed and connected: the app's queue may make it wait, an instance
//! that fails to connect is left out and the next placed, so the client never notices while one
//! is up. An instance on another node is reached through its worker (`crate::backhaul::tcp`).

use crate::admit::{self, AdmitError};
use crate::instance::connect::{connect_one, AttemptError};
use crate::routes::TcpRoute;
use anyedge_catalog::Slot;
use anyedge_core::InstanceId;
use anyedge_placement::Constraints;
use anyedge_telemetry::{ErrorCode, RetryReason};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A connected instance, with its in-flight slot.
pub(crate) struct Upstream {
    pub stream: Stream,
    pub instance: InstanceId,
    pub _inflight: Slot,
}

/// How the connection reaches its instance.
pub(crate) enum Stream {
    /// Directly (an instance of this node, or one this node reaches itself).
    Local(TcpStream),
    /// Through the worker that runs it.
    Backhaul(Box<crate::backhaul::tcp::TcpBackhaul>),
}

/// Whether the instance should back off here: every failure but a worker having no room
/// right now (`RetryElsewhere::backs_off`).
fn counts_against_instance(e: &AttemptError) -> bool {
    match e {
        AttemptError::Refused { reason, .. } => reason.backs_off(),
        _ => true,
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Admit(AdmitError),
    #[error("all {tried} instances tried failed; last: {last}")]
    AllFailed { tried: usize, last: AttemptError },
}

impl ConnectError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ConnectError::Admit(e) => e.code(),
            ConnectError::AllFailed { .. } => ErrorCode::NoInstance,
        }
    }
}

/// Place the connection on an instance (the app's queue may make it wait) and connect; an
/// instance that fails is left out and the next is placed, so the client never notices while
/// one is up.
pub(crate) async fn connect_any(
    route: &TcpRoute,
    timeout: Duration,
    shared: &crate::Shared,
    client: SocketAddr,
    edge_port: u16,
) -> Result<Upstream, ConnectError> {
    let app = &route.app;
    let deadline = tokio::time::Instant::now() + app.config.limits.queue_timeout;
    let mut tried = vec![false; app.instances.len()];
    let mut last = None;
    let mut attempts = 0;
    loop {
        let constraints = Constraints::default();
        let placing = admit::place(app, &constraints, &tried, deadline, &route.metrics, None);
        let placed = match placing.await {
            Ok(p) => p,
            Err(e) => {
                return Err(match last {
                    Some(last) if e == AdmitError::Unavailable => ConnectError::AllFailed {
                        tried: attempts,
                        last,
                    },
                    _ => ConnectError::Admit(e),
                })
            }
        };
        let index = placed.index;
        tried[index] = true;
        attempts += 1;
        let inst = &app.instances[index];
        if let Some(failed) = last.take() {
            // The app's retry budget (`retry_budget`): past it, no other instance is tried.
            let refusal = match &failed {
                AttemptError::Refused { reason, .. } => Some(*reason),
                _ => None,
            };
            let budgeted = crate::policy::budgeted(RetryReason::Connect, refusal);
            if budgeted && !crate::policy::allow_retry(app, &route.metrics, RetryReason::Connect) {
                let tried = attempts - 1;
                return Err(ConnectError::AllFailed {
                    tried,
                    last: failed,
                });
            }
            route.metrics.retry(RetryReason::Connect);
        }
        match connect(route, index, timeout, shared, client, edge_port).await {
            Ok(stream) => {
                inst.live.connect_succeeded();
                return Ok(Upstream {
                    stream,
                    instance: inst.id.clone(),
                    _inflight: placed.slot,
                });
            }
            Err(e) => {
                if counts_against_instance(&e) {
                    inst.live.connect_failed(Instant::now());
                }
                route.metrics.connect_failure(e.reason());
                tracing::info!(instance = %inst.id, attempt = attempts, error = %e, "connect failed; trying another instance");
                last = Some(e);
            }
        }
    }
}

/// Connect to the app's instance `index`: directly, or through the worker that runs it.
async fn connect(
    route: &TcpRoute,
    index: usize,
    timeout: Duration,
    shared: &crate::Shared,
    client: SocketAddr,
    edge_port: u16,
) -> Result<Stream, AttemptError> {
    let app = &route.app;
    let inst = &app.instances[index];
    let service = &app.config.services[route.service];
    match (&inst.peer, inst.address.port.or(service.internal_port)) {
        (Some(peer), _) => {
            let header =
                crate::backhaul::tcp::header(&app.name, inst.id.instance(), client, edge_port);
            crate::backhaul::tcp::open(shared, peer, &header, timeout)
                .await
                .map(|s| Stream::Backhaul(Box::new(s)))
        }
        (None, Some(port)) => connect_one(&inst.address.host, port, timeout, &shared.resolver)
            .await
            .map(Stream::Local),
        (None, None) => Err(AttemptError::NoPort),
    }
}
