//! Connections to instances: a small pool per instance on hyper's low-level client connections.
//! It knows whether a failed request was ever written (`try_send_request` hands back one that
//! was not), keeps HTTP/1.1 connections for reuse only after their response was read to the end,
//! and shares one HTTP/2 connection per instance when the service asks for an h2 backend.

use crate::instance::body::{ReqBody, SentWhole};
use crate::instance::connect::{self, AttemptError, Resolver};
use anyedge_core::InstanceId;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Idle HTTP/1.1 connections kept per instance.
const MAX_IDLE: usize = 256;

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

/// The connections of one instance.
#[derive(Default)]
pub(crate) struct UpstreamPool {
    idle: Mutex<Vec<(http1::SendRequest<ReqBody>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<ReqBody>>>,
}

/// A pooled HTTP/1.1 connection lent to one response; it goes back when the body ends, and
/// only if its request's body was sent whole (else the connection still owes the instance
/// bytes, and the next request on it would wait behind them: it is closed instead).
pub(crate) struct PoolReturn {
    sender: http1::SendRequest<ReqBody>,
    pool: Arc<UpstreamPool>,
    whole: SentWhole,
}

impl PoolReturn {
    pub fn new(
        sender: http1::SendRequest<ReqBody>,
        pool: Arc<UpstreamPool>,
        whole: SentWhole,
    ) -> PoolReturn {
        PoolReturn {
            sender,
            pool,
            whole,
        }
    }

    pub fn give_back(self) {
        if !self.whole.get() {
            tracing::debug!("instance connection closed: the instance answered before the whole request body was sent");
            return;
        }
        let mut idle = self
            .pool
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE && !self.sender.is_closed() {
            idle.push((self.sender, Instant::now()));
        }
    }
}

impl UpstreamPool {
    fn take_idle(&self, max_idle: Duration) -> Option<http1::SendRequest<ReqBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Newest first: the most recently used connection is the least likely to be closed.
        while let Some((sender, since)) = idle.pop() {
            if now.duration_since(since) < max_idle && !sender.is_closed() {
                return Some(sender);
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
        while let Some(mut sender) = self.take_idle(target.idle_timeout) {
            if sender.ready().await.is_ok() {
                return Ok(Sender::H1 {
                    sender,
                    pool: self.clone(),
                    reused: true,
                });
            }
        }
        self.fresh(target, resolver).await
    }

    /// A new HTTP/1.1 connection (also for a protocol switch, which never returns it).
    pub async fn fresh(
        self: &Arc<Self>,
        target: &Target<'_>,
        resolver: &Resolver,
    ) -> Result<Sender, UpstreamError> {
        // Boxed: connecting is the exception, and its state (resolver, connect, handshake)
        // inline would enlarge every request's future, which is moved into its box per request.
        Box::pin(self.open_h1(target, resolver)).await
    }

    async fn open_h1(
        self: &Arc<Self>,
        target: &Target<'_>,
        resolver: &Resolver,
    ) -> Result<Sender, UpstreamError> {
        let stream =
            connect::connect_one(target.host, target.port, target.connect_timeout, resolver)
                .await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "instance connection ended");
            }
        });
        Ok(Sender::H1 {
            sender,
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

/// A connection ready to carry one request.
pub(crate) enum Sender {
    H1 {
        sender: http1::SendRequest<ReqBody>,
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
    #[error(transparent)]
    Http(hyper::Error),
}

impl Failure {
    /// The request body's own error, when the body is what failed (the client's side, or a
    /// body over its limit), not the instance.
    pub fn body_error(&self) -> Option<&super::body::BodyError> {
        let Failure::Http(e) = self;
        std::error::Error::source(e).and_then(|s| s.downcast_ref())
    }
}

impl Sender {
    pub fn is_reused(&self) -> bool {
        matches!(self, Sender::H1 { reused: true, .. })
    }

    /// Send; on success the connection (HTTP/1.1) rides along with the response body and goes
    /// back to the pool when the body ends.
    pub async fn send(
        self,
        req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Option<PoolReturn>), SendError> {
        let result = match self {
            Sender::H1 {
                mut sender, pool, ..
            } => {
                let whole = req.body().sent_whole();
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, Some(PoolReturn::new(sender, pool, whole)))),
                    Err(e) => e,
                }
            }
            Sender::H2(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, None)),
                Err(e) => e,
            },
        };
        let mut e = result;
        match e.take_message() {
            Some(_) => Err(SendError::Unsent),
            None => Err(SendError::Failed(Failure::Http(e.into_error()))),
        }
    }

    /// For a protocol switch: send on this connection and never pool it.
    pub async fn send_once(self, req: Request<ReqBody>) -> Result<Response<Incoming>, Failure> {
        match self {
            Sender::H1 { mut sender, .. } => sender.send_request(req).await.map_err(Failure::Http),
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

    /// Drop the pools no current route uses; their idle connections close.
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|key, _| keep(key));
    }
}
