//! Connecting to an instance: resolve (with a small cache) and connect with a deadline; why one
//! attempt failed ([`AttemptError`]).

use crate::sockets::keep_alive;
use anyedge_telemetry::ConnectFailure;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const RESOLVED_TTL: Duration = Duration::from_secs(30);
const FAILED_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 4096;

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
    Refused {
        peer: String,
        reason: anyedge_backhaul::retry::RetryElsewhere,
    },
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
                keep_alive(&stream);
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
