//! Connecting to an instance: resolve (with a small cache), connect with a deadline, and carry
//! the attempt to another instance when one fails.

use crate::admit::{self, AdmitError};
use crate::routes::TcpRoute;
use anyedge_catalog::Slot;
use anyedge_core::InstanceId;
use anyedge_placement::Constraints;
use anyedge_telemetry::{ConnectFailure, ErrorCode, RetryReason};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const RESOLVED_TTL: Duration = Duration::from_secs(30);
const FAILED_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 4096;

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

impl AttemptError {
    /// Whether the instance should back off here: every failure but a worker having no room
    /// right now (`crate::backhaul::instance_failed`).
    fn counts_against_instance(&self) -> bool {
        match self {
            AttemptError::Refused { reason, .. } => crate::backhaul::instance_failed(reason),
            _ => true,
        }
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

#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("{host}: name does not resolve")]
    Resolve { host: String },
    #[error("{addr}: connect timed out")]
    Timeout { addr: String },
    #[error("{addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("service has no port for this instance")]
    NoPort,
    #[error("backhaul to {peer}: {why}")]
    Backhaul { peer: String, why: String },
    #[error("worker {peer} refused: {reason}")]
    Refused { peer: String, reason: &'static str },
}

impl AttemptError {
    pub(crate) fn reason(&self) -> ConnectFailure {
        match self {
            AttemptError::Resolve { .. } => ConnectFailure::Resolve,
            AttemptError::Timeout { .. } => ConnectFailure::Timeout,
            AttemptError::NoPort | AttemptError::Backhaul { .. } | AttemptError::Refused { .. } => {
                ConnectFailure::Other
            }
            AttemptError::Io { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
                io::ErrorKind::TimedOut => ConnectFailure::Timeout,
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    ConnectFailure::Unreachable
                }
                _ => ConnectFailure::Other,
            },
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
    let service = &app.config.services[route.service];
    let deadline = tokio::time::Instant::now() + app.config.limits.queue_timeout;
    let mut tried = vec![false; app.instances.len()];
    let mut last = None;
    let mut attempts = 0;
    loop {
        let placed = match admit::place(
            app,
            &Constraints::default(),
            &tried,
            deadline,
            &route.metrics,
            None,
        )
        .await
        {
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
        if attempts > 1 {
            route.metrics.retry(RetryReason::Connect);
        }
        let result = match (&inst.peer, inst.address.port.or(service.internal_port)) {
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
        };
        match result {
            Ok(stream) => {
                inst.live.connect_succeeded();
                return Ok(Upstream {
                    stream,
                    instance: inst.id.clone(),
                    _inflight: placed.slot,
                });
            }
            Err(e) => {
                if e.counts_against_instance() {
                    inst.live.connect_failed(Instant::now());
                }
                route.metrics.connect_failure(e.reason());
                tracing::info!(instance = %inst.id, attempt = attempts, error = %e, "connect failed; trying another instance");
                last = Some(e);
            }
        }
    }
}

pub(crate) async fn connect_one(
    host: &str,
    port: u16,
    timeout: Duration,
    resolver: &Resolver,
) -> Result<TcpStream, AttemptError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let addrs = tokio::time::timeout_at(deadline, resolver.resolve(host, port))
        .await
        .map_err(|_| AttemptError::Timeout {
            addr: format!("{host}:{port}"),
        })?
        .ok_or_else(|| AttemptError::Resolve {
            host: host.to_string(),
        })?;
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(source)) => last = Some(AttemptError::Io { addr, source }),
            Err(_) => {
                return Err(AttemptError::Timeout {
                    addr: addr.to_string(),
                })
            }
        }
    }
    Err(last.unwrap_or(AttemptError::Resolve {
        host: host.to_string(),
    }))
}

/// Host name resolution with a small cache: 30 s for answers, 5 s for failures, so a dead name
/// costs one lookup per few seconds rather than one per connection.
#[derive(Default)]
pub(crate) struct Resolver {
    cache: Mutex<HashMap<String, Cached>>,
}

/// Until when an answer holds, and the answer (`None`: the name did not resolve).
type Cached = (Instant, Option<Vec<IpAddr>>);

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(vec![SocketAddr::new(ip, port)]);
        }
        let now = Instant::now();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache
                .get(host)
                .filter(|(until, _)| *until > now)
                .map(|(_, ips)| ips.clone())
        };
        let ips = match cached {
            Some(ips) => ips,
            None => {
                let ips = tokio::net::lookup_host((host, port))
                    .await
                    .ok()
                    .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
                    .filter(|ips| !ips.is_empty());
                let ttl = if ips.is_some() {
                    RESOLVED_TTL
                } else {
                    FAILED_TTL
                };
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= CACHE_MAX {
                    cache.retain(|_, (until, _)| *until > now);
                }
                cache.insert(host.to_string(), (now + ttl, ips.clone()));
                ips
            }
        };
        ips.map(|ips| {
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_skip_lookup_and_bad_names_fail() {
        let r = Resolver::default();
        assert_eq!(
            r.resolve("127.0.0.1", 80).await,
            Some(vec![SocketAddr::from(([127, 0, 0, 1], 80))])
        );
        assert_eq!(r.resolve("::1", 80).await.map(|v| v.len()), Some(1));
        assert_eq!(r.resolve("bad.target.for.testing", 80).await, None);
        // cached failure answers the same
        assert_eq!(r.resolve("bad.target.for.testing", 80).await, None);
    }
}
