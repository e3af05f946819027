//! The admin listener: `/healthz`, `/metrics` for the operator, and `/v1/apps/<app>/metrics` for
//! each app's owners with their bearer token.

use anyedge_catalog::{AppEntry, Snapshot};
use anyedge_core::Drain;
use anyedge_store::CatalogStatus;
use anyedge_telemetry::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin endpoints read.
pub struct AdminState {
    metrics: Arc<Metrics>,
    drain: Drain,
    snapshot: Mutex<Arc<Snapshot>>,
    reload_error: Mutex<Option<String>>,
    /// With the etcd store: whether the catalog is current.
    catalog: Mutex<Option<Arc<CatalogStatus>>>,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>, drain: Drain, snapshot: Arc<Snapshot>) -> Self {
        AdminState {
            metrics,
            drain,
            snapshot: Mutex::new(snapshot),
            reload_error: Mutex::new(None),
            catalog: Mutex::new(None),
        }
    }

    pub fn set_catalog_status(&self, status: Arc<CatalogStatus>) {
        *self.catalog.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
    }

    fn catalog(&self) -> Option<Arc<CatalogStatus>> {
        self.catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_snapshot(&self, s: Arc<Snapshot>) {
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = s;
    }

    pub fn set_reload_error(&self, e: Option<String>) {
        *self
            .reload_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The admin listener, serving in the background.
pub struct AdminListener {
    pub local: SocketAddr,
    /// A copy of the socket's descriptor, to hand it over to a new process.
    pub fd: std::os::fd::OwnedFd,
    /// Dropped: the accept loop ends (the socket closes here, and lives on in the new
    /// process it was handed to). Connections already accepted go on.
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// Bind `addr` (or take `inherited`, the socket the previous process handed over for it) and
/// serve in the background.
pub fn serve(
    addr: SocketAddr,
    inherited: Option<std::os::fd::OwnedFd>,
    state: Arc<AdminState>,
) -> std::io::Result<AdminListener> {
    let std_listener = match inherited {
        Some(fd) => anyedge_edge::adopt_listener(fd)?,
        None => {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            l
        }
    };
    let fd = std_listener.try_clone()?.into();
    let listener = TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(AdminListener { local, fd, stop })
}

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let path = req.uri().path();
    match path {
        "/healthz" => health(state),
        "/metrics" => {
            let open = i64::try_from(state.drain.open_connections()).unwrap_or(i64::MAX);
            state
                .metrics
                .node
                .open_connections
                .store(open, std::sync::atomic::Ordering::Relaxed);
            let mut text = state.metrics.render();
            let snapshot = state.snapshot();
            instance_gauges(&snapshot, None, &mut text);
            if let Some(status) = state.catalog() {
                catalog_metrics(&status, &mut text);
            }
            metrics_text(text)
        }
        _ => match path
            .strip_prefix("/v1/apps/")
            .and_then(|p| p.strip_suffix("/metrics"))
        {
            Some(app) => app_metrics(state, app, req),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

fn health(state: &AdminState) -> Response<Full<Bytes>> {
    let snapshot = state.snapshot();
    let draining = state.drain.is_draining();
    let reload_error = state
        .reload_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    // With the etcd store the node serves its last snapshot while etcd is away: still 200,
    // with how stale the catalog may be.
    let catalog = match state.catalog() {
        None => serde_json::json!({ "store": "file" }),
        Some(c) => serde_json::json!({
            "store": "etcd",
            "connected": c.connected(),
            "stale_seconds": c.stale_for().as_secs_f64(),
            "revision": c.revision(),
            "last_error": c.last_error(),
        }),
    };
    let body = serde_json::json!({
        "status": if draining { "draining" } else { "ok" },
        "node": snapshot.config.node.id,
        "region": snapshot.config.node.region,
        "generation": snapshot.generation,
        "apps": snapshot.apps.len(),
        "open_connections": state.drain.open_connections(),
        "last_reload_error": reload_error,
        "catalog": catalog,
    });
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An app's series for a bearer token whose SHA-256 is in the app's `tokens_sha256`. An unknown
/// app and a wrong token get the same 403, so the endpoint does not reveal which apps exist.
fn app_metrics(state: &AdminState, app: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let snapshot = state.snapshot();
    let allowed = match (token, snapshot.app(app)) {
        (Some(token), Some(entry)) => entry.config.accepts_token(token.as_bytes()),
        _ => false,
    };
    if !allowed {
        return text(StatusCode::FORBIDDEN, "forbidden\n");
    }
    let mut text = state.metrics.render_app(app);
    instance_gauges(&snapshot, Some(app), &mut text);
    metrics_text(text)
}

/// The snapshot's apps (or only one), by name.
fn sorted_apps<'a>(snapshot: &'a Snapshot, only: Option<&str>) -> Vec<&'a Arc<AppEntry>> {
    let mut apps: Vec<_> = snapshot
        .apps
        .values()
        .filter(|a| only.is_none_or(|o| o == &*a.name))
        .collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    apps
}

/// The per-instance gauges, read from the live state of the snapshot in force:
/// `anyedge_app_concurrency{app,instance}` (requests or connections in flight to each instance
/// from this node) and `anyedge_instance_healthy{app,instance}` (1 while the instance may be
/// placed: no failing active check, not passively ejected, not ejected as an outlier).
fn instance_gauges(snapshot: &Snapshot, only: Option<&str>, out: &mut String) {
    use std::fmt::Write;
    let now = Instant::now();
    let apps = sorted_apps(snapshot, only);
    type Read<'a> = &'a dyn Fn(&anyedge_catalog::InstanceEntry) -> u32;
    let gauges: [(&str, &str, Read<'_>); 2] = [
        (
            "anyedge_app_concurrency",
            "In-flight requests (HTTP) or connections (TCP) to each instance from this node.",
            &|i| i.live.inflight.in_use(),
        ),
        (
            "anyedge_instance_healthy",
            "1 if the instance can be chosen (active checks pass, not ejected after connect failures or as an outlier), else 0.",
            &|i| u32::from(i.live.healthy(now) && !i.live.outlier.ejected(now)),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for app in &apps {
            for inst in &app.instances {
                let _ = writeln!(
                    out,
                    "{name}{{app=\"{}\",instance=\"{}\"}} {}",
                    app.name,
                    inst.id.instance(),
                    value(inst)
                );
            }
        }
    }
}

/// `anyedge_catalog_connected` and `anyedge_catalog_stale_seconds` (etcd store only).
fn catalog_metrics(status: &CatalogStatus, out: &mut String) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "# HELP anyedge_catalog_connected 1 while the node follows etcd's catalog, else 0 (serving its last snapshot).\n\
         # TYPE anyedge_catalog_connected gauge\n\
         anyedge_catalog_connected {}\n\
         # HELP anyedge_catalog_stale_seconds Seconds since the catalog was last known current (0 while connected).\n\
         # TYPE anyedge_catalog_stale_seconds gauge\n\
         anyedge_catalog_stale_seconds {:.3}\n\
         # HELP anyedge_catalog_disconnects_total Times the connection to etcd was lost while following the catalog.\n\
         # TYPE anyedge_catalog_disconnects_total counter\n\
         anyedge_catalog_disconnects_total {}\n\
         # HELP anyedge_catalog_listings_total Full listings of the catalog (the first, then after a loss or a compaction).\n\
         # TYPE anyedge_catalog_listings_total counter\n\
         anyedge_catalog_listings_total {}\n\
         # HELP anyedge_catalog_revision The etcd revision the node's catalog reflects (every change up to it applied or found not to concern the node).\n\
         # TYPE anyedge_catalog_revision gauge\n\
         anyedge_catalog_revision {}\n\
         # HELP anyedge_catalog_graced_instances Instances kept in this node's config after they left the catalog with their worker's lease, while the worker reports them (docs/cluster.md).\n\
         # TYPE anyedge_catalog_graced_instances gauge\n\
         anyedge_catalog_graced_instances {}\n",
        u8::from(status.connected()),
        status.stale_for().as_secs_f64(),
        status.disconnects(),
        status.listings(),
        status.revision(),
        status.graced()
    );
}

fn metrics_text(body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}
