//! The demo's machines API, for its app that scales to zero (`docs/on-demand.md`): `POST
//! /v1/machines/sleepy-1/start` boots the built-in `sleepy-1` instance (it listens after a
//! second, as a real machine would take a while), `.../stop` stops it. The edge's `http`
//! driver calls it.

use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// How long the demo's machine takes to boot before it listens.
const BOOT: Duration = Duration::from_secs(1);

/// The API's address and the address its one machine serves on when running.
pub struct Machines {
    pub api: SocketAddr,
    pub instance: SocketAddr,
}

/// Start the API on 127.0.0.1 (an ephemeral port); its machine is stopped.
pub async fn spawn() -> std::io::Result<Machines> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let api = listener.local_addr()?;
    let instance = SocketAddr::from(([127, 0, 0, 1], super::instances::unused_port()?));
    let running: Arc<Mutex<Option<AbortHandle>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let running = running.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let running = running.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, instance, &running)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Machines { api, instance })
}

fn answer<B>(
    req: &hyper::Request<B>,
    instance: SocketAddr,
    running: &Mutex<Option<AbortHandle>>,
) -> hyper::Response<Full<Bytes>> {
    let mut machine = running.lock().unwrap_or_else(PoisonError::into_inner);
    let (status, text) = match (req.method().as_str(), req.uri().path()) {
        ("POST", "/v1/machines/sleepy-1/start") => {
            if machine.as_ref().is_none_or(|m| m.is_finished()) {
                *machine = Some(tokio::spawn(boot(instance)).abort_handle());
            }
            (200, "{\"state\":\"starting\"}")
        }
        ("POST", "/v1/machines/sleepy-1/stop") => {
            if let Some(m) = machine.take() {
                m.abort();
            }
            (200, "{\"state\":\"stopped\"}")
        }
        _ => (404, "{\"error\":\"no such machine\"}"),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    resp
}

/// Boot, then serve until aborted (a stop).
async fn boot(addr: SocketAddr) {
    tokio::time::sleep(BOOT).await;
    match TcpListener::bind(addr).await {
        Ok(listener) => super::instances::serve_http(listener, "sleepy", "sleepy-1".into()).await,
        Err(e) => tracing::warn!(%addr, error = %e, "demo machine sleepy-1 cannot listen"),
    }
}
