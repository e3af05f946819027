//! Connections to instances: a small pool per instance. HTTP/1.1 connections are bare sockets
//! carried by our own client ([`super::http1`]), kept for reuse only after their response was
//! read to the end; one HTTP/2 connection per instance (hyper's client) is shared when the
//! service asks for an h2 backend.

use crate::instance::body::{ReqBody, UpBody};
use crate::instance::connect::{self, AttemptError, Resolver};
use crate::instance::http1::{self, H1Error};
use anyedge_core::InstanceId;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::{Request, Response};
use tokio::net::TcpStream;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Idle HTTP/1.1 connections kept per instance.
const MAX_IDLE: usize = 256;
/// How often idle connections are swept: those the instance closed, or past the idle timeout,
/// are closed then rather than when the pool is next used.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// The idle timeout a pool sweeps by before any request has told it its own.
const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(4);

/// Why a request could not be carried to an instance.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// Nothing was sent: safe to try another instance.
    #[error("connect failed: {0}")]
    Connect(#[from] AttemptError),
    /// Nothing was sent either.
    #[error("HTTP handshake with the instance failed: {0}")]
    Handshake(hyper::Error),
}

/// Where an instance listens and how to talk to it.
pub(crate) struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub h2: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl<'a> Target<'a> {
    /// Where `inst` serves `service`: its own port if its address names one, else the
    /// service's `internal_port`; `None` when neither does (validation rules that out).
    pub fn of(
        inst: &'a anyedge_catalog::InstanceEntry,
        service: &anyedge_config::Service,
        h2: bool,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<Target<'a>> {
        Some(Target {
            host: &inst.address.host,
            port: inst.address.port.or(service.internal_port)?,
            h2,
            connect_timeout,
            idle_timeout,
        })
    }
}

/// The connections of one instance: idle HTTP/1.1 sockets (nothing else is held for them),
/// and the shared HTTP/2 connection when the service asks for an h2 backend.
#[derive(Default)]
pub(crate) struct UpstreamPool {
    idle: Mutex<Idle>,
    h2: Mutex<Option<http2::SendRequest<ReqBody>>>,
}

/// A pool's idle HTTP/1.1 connections, oldest first.
#[derive(Default)]
struct Idle {
    conns: Vec<(TcpStream, Instant)>,
    /// The idle timeout the last request gave (`None`: none yet).
    max_idle: Option<Duration>,
    /// The pool is on the sweep's list.
    listed: bool,
}

/// Pools that hold idle connections, for the sweep: every [`SWEEP_EVERY`], those the instance
/// closed and those past their idle timeout are closed, without waiting for the pool's next
/// request (a pool no request comes to would hold them until the pool is dropped). One thread
/// for the process, started with the first pooled connection; it touches only pools that hold
/// connections, so a catalog of many instances costs it nothing.
static SWEEP: Mutex<Vec<std::sync::Weak<UpstreamPool>>> = Mutex::new(Vec::new());

fn sweep_list() -> std::sync::MutexGuard<'static, Vec<std::sync::Weak<UpstreamPool>>> {
    static SWEEPER: std::sync::Once = std::sync::Once::new();
    SWEEPER.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("anyedge-pool-sweep".into())
            .spawn(|| loop {
                std::thread::sleep(SWEEP_EVERY);
                sweep_all();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no idle-connection sweep: idle connections close when next used");
        }
    });
    SWEEP.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One sweep over the listed pools; those left without connections leave the list.
fn sweep_all() {
    let listed = std::mem::take(&mut *sweep_list());
    let kept: Vec<_> = listed
        .into_iter()
        .filter(|w| w.upgrade().is_some_and(|pool| pool.sweep()))
        .collect();
    sweep_list().extend(kept);
}

impl UpstreamPool {
    /// A connection whose response was read whole, for the next request.
    pub(crate) fn put(self: &Arc<Self>, io: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.conns.len() < MAX_IDLE {
            idle.conns.push((io, Instant::now()));
            if !std::mem::replace(&mut idle.listed, true) {
                sweep_list().push(Arc::downgrade(self));
            }
        }
    }

    /// Close the idle connections the instance closed or that are past the idle timeout;
    /// whether any is left (if not, the pool leaves the sweep's list).
    pub(crate) fn sweep(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let max_idle = idle.max_idle.unwrap_or(DEFAULT_MAX_IDLE);
        let now = Instant::now();
        idle.conns
            .retain(|(io, since)| now.duration_since(*since) < max_idle && is_open(io));
        idle.listed = !idle.conns.is_empty();
        idle.listed
    }

    /// Idle connections held.
    #[cfg(test)]
    pub(crate) fn idle_len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .len()
    }

    pub(crate) fn take_idle(&self, max_idle: Duration) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.max_idle = Some(max_idle);
        let now = Instant::now();
        // The oldest are first: those past the idle timeout close.
        let expired = idle
            .conns
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= max_idle)
            .count();
        idle.conns.drain(..expired);
        // Newest first: the most recently used connection is the least likely to be closed.
        while let Some((io, _)) = idle.conns.pop() {
            if is_open(&io) {
                return Some(io);
            }
        }
        None
    }

    /// A connection to send one request on: an idle pooled one when there is one, else new.
    pub async fn sender(
        self: &Arc<Self>,
        target: &Target<'_>,
        resolver: &Resolver,
    ) -> Result<Sender, UpstreamError> {
        if target.h2 {
            return self.h2_sender(target, resolver).await.map(Sender::H2);
        }
        if let Some(io) = self.take_idle(target.idle_timeout) {
            return Ok(Sender::H1 {
                io,
                pool: self.clone(),
                reused: true,
            });
        }
        self.fresh(target, resolver).await
    }

    /// A new HTTP/1.1 connection (also for a protocol switch, which never returns it).
    pub async fn fresh(
        self: &Arc<Self>,
        target: &Target<'_>,
        resolver: &Resolver,
    ) -> Result<Sender, UpstreamError> {
        // Boxed: connecting is the exception, and its state (resolver, connect) inline would
        // enlarge every request's future, which is moved into its box per request.
        let connecting =
            connect::connect_one(target.host, target.port, target.connect_timeout, resolver);
        let io = Box::pin(connecting).await?;
        Ok(Sender::H1 {
            io,
            pool: self.clone(),
            reused: false,
        })
    }

    async fn h2_sender(
        &self,
        target: &Target<'_>,
        resolver: &Resolver,
    ) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        let existing = self
            .h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(mut s) = existing.filter(|s| !s.is_closed()) {
            if s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        // Boxed for the reason given in `fresh`.
        Box::pin(self.open_h2(target, resolver)).await
    }

    async fn open_h2(
        &self,
        target: &Target<'_>,
        resolver: &Resolver,
    ) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        let stream =
            connect::connect_one(target.host, target.port, target.connect_timeout, resolver)
                .await?;
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "instance h2 connection ended");
            }
        });
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
        sender.ready().await.map_err(UpstreamError::Handshake)?;
        Ok(sender)
    }
}

/// Whether an idle connection is still open: the instance has not closed it and sent nothing
/// unasked. Costs no system call unless the socket became readable while idle.
fn is_open(io: &TcpStream) -> bool {
    matches!(io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A connection ready to carry one request.
pub(crate) enum Sender {
    H1 {
        io: TcpStream,
        pool: Arc<UpstreamPool>,
        reused: bool,
    },
    H2(http2::SendRequest<ReqBody>),
}

/// A send that failed.
pub(crate) enum SendError {
    /// The connection was found closed before any of the request was written.
    Unsent,
    /// The request was (at least partly) written.
    Failed(Failure),
}

/// Why a request that was (at least partly) written failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// On hyper's client: an HTTP/2 instance, or a protocol switch.
    #[error(transparent)]
    Http(hyper::Error),
    /// On our HTTP/1.1 client.
    #[error(transparent)]
    H1(#[from] H1Error),
}

impl Failure {
    /// The request body's own error, when the body is what failed (the client's side, or a
    /// body over its limit), not the instance.
    pub fn body_error(&self) -> Option<&super::body::BodyError> {
        match self {
            Failure::Http(e) => std::error::Error::source(e).and_then(|s| s.downcast_ref()),
            Failure::H1(H1Error::Body(b)) => Some(b),
            Failure::H1(_) => None,
        }
    }
}

impl Sender {
    pub fn is_reused(&self) -> bool {
        matches!(self, Sender::H1 { reused: true, .. })
    }

    /// Send; an HTTP/1.1 connection rides along with the response body and goes back to the
    /// pool when the body ends.
    pub async fn send(self, req: Request<ReqBody>) -> Result<Response<UpBody>, SendError> {
        match self {
            Sender::H1 { io, pool, .. } => {
                let (parts, body) = req.into_parts();
                match http1::send(io, http1::Outbound::of(&parts), body, pool).await {
                    Ok(resp) => Ok(resp.map(UpBody::H1)),
                    Err(e) => Err(SendError::Failed(Failure::H1(e))),
                }
            }
            Sender::H2(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => Ok(resp.map(UpBody::Hyper)),
                Err(mut e) => match e.take_message() {
                    Some(_) => Err(SendError::Unsent),
                    None => Err(SendError::Failed(Failure::Http(e.into_error()))),
                },
            },
        }
    }

    /// For a protocol switch: send on this connection (through hyper's client, which hands
    /// the connection over after a 101) and never pool it.
    pub async fn send_once(self, req: Request<ReqBody>) -> Result<Response<Incoming>, Failure> {
        match self {
            Sender::H1 { io, .. } => {
                let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(Failure::Http)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "instance connection ended");
                    }
                });
                sender.send_request(req).await.map_err(Failure::Http)
            }
            Sender::H2(mut sender) => sender.send_request(req).await.map_err(Failure::Http),
        }
    }
}

/// What a pool connects to: the instance and the address it is reached at for one service. An
/// instance whose address (or the service's port) changes under the same id gets a new pool, so
/// no request follows a pooled connection to the old address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub id: InstanceId,
    pub host: String,
    pub port: Option<u16>,
}

/// Pools by what they connect to, carried across snapshots like the rest of the live state.
#[derive(Default)]
pub(crate) struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<UpstreamPool>>>,
}

impl Pools {
    pub fn get(&self, key: &PoolKey) -> Arc<UpstreamPool> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = map.get(key) {
            return pool.clone();
        }
        map.entry(key.clone()).or_default().clone()
    }

    /// Drop these pools (no current route uses them); their idle connections close.
    pub fn remove(&self, keys: &[PoolKey]) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            map.remove(key);
        }
    }

    /// Drop the pools no current route uses; their idle connections close.
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|key, _| keep(key));
    }
}
