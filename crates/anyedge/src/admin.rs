//! The admin listener: `/healthz`, `/metrics` and `/v1/status` for the operator, the live
//! dashboard (`/`, `/apps/<app>`, `docs/dashboard.md`), and `/v1/apps/<app>/metrics` and
//! `/v1/apps/<app>/status` for each app's owners with their bearer token.

mod history;
mod page;
pub mod status;
mod stream;

use anyedge_catalog::{AppEntry, Snapshot};
use anyedge_core::Drain;
use anyedge_store::CatalogStatus;
use anyedge_telemetry::Metrics;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use stream::{MAX_SUBSCRIBERS, STALL as STREAM_STALL};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Apps in each picture of the operator's live stream (the busiest); `/v1/status` has all.
const STREAM_MAX_APPS: usize = 100;
/// Reloads remembered for the dashboard.
const RELOADS_KEPT: usize = 20;

type AdminBody = Either<Full<Bytes>, stream::SseBody>;
/// A snapshot's apps, by name.
type SortedApps = Arc<[Arc<AppEntry>]>;

/// What the admin endpoints read.
pub struct AdminState {
    metrics: Arc<Metrics>,
    drain: Drain,
    snapshot: Mutex<Arc<Snapshot>>,
    reload_error: Mutex<Option<String>>,
    /// With the etcd store: whether the catalog is current.
    catalog: Mutex<Option<Arc<CatalogStatus>>>,
    started: Instant,
    /// The app and backhaul listeners open now (set by the node after each change).
    listening: Mutex<Vec<SocketAddr>>,
    /// The last reloads, newest last.
    reloads: Mutex<VecDeque<serde_json::Value>>,
    history: Mutex<history::History>,
    streams: stream::Streams,
    /// The apps of the snapshot in force, by name: sorted once per snapshot, not once per
    /// picture (the live stream builds up to 1,000 a second).
    sorted_apps: Mutex<Option<(Weak<Snapshot>, SortedApps)>>,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>, drain: Drain, snapshot: Arc<Snapshot>) -> Self {
        AdminState {
            metrics,
            drain,
            snapshot: Mutex::new(snapshot),
            reload_error: Mutex::new(None),
            catalog: Mutex::new(None),
            started: Instant::now(),
            listening: Mutex::new(Vec::new()),
            reloads: Mutex::new(VecDeque::new()),
            history: Mutex::new(history::History::default()),
            streams: stream::Streams::default(),
            sorted_apps: Mutex::new(None),
        }
    }

    pub fn set_catalog_status(&self, status: Arc<CatalogStatus>) {
        *lock(&self.catalog) = Some(status);
    }

    fn catalog(&self) -> Option<Arc<CatalogStatus>> {
        lock(&self.catalog).clone()
    }

    pub fn set_snapshot(&self, s: Arc<Snapshot>) {
        *lock(&self.snapshot) = s;
        // The old snapshot's apps are not held on to until the next picture.
        *lock(&self.sorted_apps) = None;
    }

    pub fn set_listening(&self, addrs: Vec<SocketAddr>) {
        *lock(&self.listening) = addrs;
    }

    fn listening(&self) -> Vec<SocketAddr> {
        lock(&self.listening).clone()
    }

    /// The outcome of a reload (`None`: the new config is in force), remembered for the
    /// dashboard with its time and the generation in force after it.
    pub fn set_reload_error(&self, e: Option<String>) {
        let record = serde_json::json!({
            "time_ms": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            "ok": e.is_none(),
            "generation": self.snapshot().generation,
            "error": e,
        });
        let mut reloads = lock(&self.reloads);
        if reloads.len() == RELOADS_KEPT {
            reloads.pop_front();
        }
        reloads.push_back(record);
        drop(reloads);
        *lock(&self.reload_error) = e;
    }

    fn reloads_json(&self) -> serde_json::Value {
        let n = &self.metrics.node;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        serde_json::json!({
            "ok": get(&n.reloads_ok),
            "failed": get(&n.reloads_failed),
            "last_error": lock(&self.reload_error).clone(),
            "recent": lock(&self.reloads).iter().rev().cloned().collect::<Vec<_>>(),
        })
    }

    fn history(&self) -> MutexGuard<'_, history::History> {
        lock(&self.history)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        lock(&self.snapshot).clone()
    }

    /// `snapshot`'s apps by name (kept until the next snapshot).
    fn sorted_apps(&self, snapshot: &Arc<Snapshot>) -> SortedApps {
        let mut cached = lock(&self.sorted_apps);
        if let Some((s, apps)) = &*cached {
            // (The Weak keeps the allocation, so its address is no other snapshot's.)
            if std::ptr::eq(s.as_ptr(), Arc::as_ptr(snapshot)) {
                return apps.clone();
            }
        }
        let mut apps: Vec<Arc<AppEntry>> = snapshot.apps.values().cloned().collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        let apps: SortedApps = apps.into();
        *cached = Some((Arc::downgrade(snapshot), apps.clone()));
        apps
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    tokio::spawn(updates(Arc::downgrade(&state)));
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
                // Notified when this connection's live stream is too slow: the connection is
                // dropped (closed) rather than waited for.
                let kill = Arc::new(Notify::new());
                let killer = kill.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let kill = kill.clone();
                    async move { Ok::<_, Infallible>(handle(&state, &req, kill)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    () = killer.notified() => {}
                }
            });
        }
    });
    Ok(AdminListener { local, fd, stop })
}

/// How far behind its cadence the update task may fall and still catch up: the missed
/// pictures are built back to back (yielding between them, so the streams drain). Late by
/// more (the node was stopped or starved for a second), the missed intervals are skipped,
/// counted in `anyedge_admin_stream_updates_skipped_total`, and the cadence starts afresh:
/// pictures are whole, so the next one carries everything the skipped ones would have.
const CATCH_UP: Duration = Duration::from_secs(1);

/// The admin task: samples traffic for the windows, and sends each live stream its picture
/// every `[admin] update_interval` while any is open. Ends with the admin state.
///
/// The cadence is a fixed schedule (the n-th update is due at start + n intervals, not an
/// interval after the previous one's work), so 1 ms means 1,000 updates a second however long
/// each takes to build and however late the thread is woken (tokio's timer rounds a deadline
/// up to its next millisecond): an update due while the task was busy or descheduled is built
/// as soon as it runs again, up to [`CATCH_UP`] late.
async fn updates(state: Weak<AdminState>) {
    let mut last_sample: Option<Instant> = None;
    let mut every = Duration::ZERO;
    let mut due = Instant::now();
    loop {
        let Some(state) = state.upgrade() else { return };
        let snapshot = state.snapshot();
        if snapshot.config.admin.update_interval != every {
            every = snapshot
                .config
                .admin
                .update_interval
                .max(Duration::from_micros(1));
            due = Instant::now();
        }
        let now = Instant::now();
        if last_sample.is_none_or(|t| now.duration_since(t) >= history::SAMPLE_EVERY) {
            state.history().sample(&snapshot, &state.metrics, now);
            last_sample = Some(now);
        }
        if !state.streams.is_empty() {
            publish(&state, &snapshot);
        }
        due += every;
        let now = Instant::now();
        let late = now.saturating_duration_since(due);
        if late > CATCH_UP.max(every) {
            let missed = late.as_nanos() / every.as_nanos();
            state
                .streams
                .skipped(u64::try_from(missed).unwrap_or(u64::MAX));
            due = now;
        }
        drop((state, snapshot));
        if due <= now {
            // Behind: the next picture now, after the streams have had their turn.
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Build each open view's picture once and offer it to its readers.
fn publish(state: &AdminState, snapshot: &Arc<Snapshot>) {
    let id = state.streams.updates() + 1;
    let apps = state.sorted_apps(snapshot);
    let pictures: Vec<_> = state
        .streams
        .views()
        .into_iter()
        .map(|view| {
            let picture = match &view {
                stream::View::Operator => Some(stream::event(
                    id,
                    &status::node_status(state, snapshot, &apps, Some(STREAM_MAX_APPS)),
                )),
                stream::View::App { name, token } => snapshot
                    .app(name)
                    .filter(|a| a.config.tokens_sha256.contains(token))
                    .map(|a| stream::event(id, &status::app_status(state, snapshot, a))),
            };
            (view, picture)
        })
        .collect();
    state.streams.publish(&pictures);
}

/// The bearer token of a request, if any.
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The operator's view is open unless `[admin] tokens_sha256` lists tokens; then it takes one.
fn operator_allowed(snapshot: &Snapshot, req: &Request<Incoming>) -> bool {
    let admin = &snapshot.config.admin;
    admin.tokens_sha256.is_empty() || bearer(req).is_some_and(|t| admin.accepts_token(t.as_bytes()))
}

/// The app `name` if the request carries one of its owners' tokens (or an operator token,
/// when the operator has any). An unknown app and a wrong token are told apart nowhere.
fn owner_allowed<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    req: &Request<Incoming>,
) -> Option<&'a Arc<AppEntry>> {
    let token = bearer(req)?;
    let app = snapshot.app(name)?;
    let admin = &snapshot.config.admin;
    let operator = !admin.tokens_sha256.is_empty() && admin.accepts_token(token.as_bytes());
    (operator || app.config.accepts_token(token.as_bytes())).then_some(app)
}

fn handle(state: &AdminState, req: &Request<Incoming>, kill: Arc<Notify>) -> Response<AdminBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let path = req.uri().path();
    if let Some(page) = page::get(path) {
        return page;
    }
    let snapshot = state.snapshot();
    let operator = operator_allowed(&snapshot, req);
    match path {
        "/healthz" => return health(state),
        "/metrics" | "/v1/status" | "/v1/status/stream" if !operator => {
            return text(StatusCode::FORBIDDEN, "forbidden\n")
        }
        "/metrics" => return operator_metrics(state, &snapshot),
        "/v1/status" => {
            let snapshot = state.snapshot();
            let apps = state.sorted_apps(&snapshot);
            return json_response(&status::node_status(state, &snapshot, &apps, None));
        }
        "/v1/status/stream" => {
            let snapshot = state.snapshot();
            let first = stream::event(
                state.streams.updates(),
                &status::node_status(
                    state,
                    &snapshot,
                    &state.sorted_apps(&snapshot),
                    Some(STREAM_MAX_APPS),
                ),
            );
            return open_stream(state, stream::View::Operator, first, kill);
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v1/apps/") else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let (name, what) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(what, "metrics" | "status" | "status/stream") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let Some(app) = owner_allowed(&snapshot, name, req) else {
        return text(StatusCode::FORBIDDEN, "forbidden\n");
    };
    match what {
        "metrics" => app_metrics(state, &snapshot, app),
        "status" => json_response(&status::app_status(state, &snapshot, app)),
        _ => {
            let token = bearer(req).unwrap_or_default();
            let first = stream::event(
                state.streams.updates(),
                &status::app_status(state, &snapshot, app),
            );
            open_stream(state, stream::View::app(name, token), first, kill)
        }
    }
}

fn open_stream(
    state: &AdminState,
    view: stream::View,
    first: Bytes,
    kill: Arc<Notify>,
) -> Response<AdminBody> {
    let Some(body) = state.streams.subscribe(view, first, kill) else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many live streams\n");
    };
    let mut resp = Response::new(Either::Right(body));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json_response(v: &impl serde::Serialize) -> Response<AdminBody> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body))));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn operator_metrics(state: &AdminState, snapshot: &Snapshot) -> Response<AdminBody> {
    let open = i64::try_from(state.drain.open_connections()).unwrap_or(i64::MAX);
    state
        .metrics
        .node
        .open_connections
        .store(open, std::sync::atomic::Ordering::Relaxed);
    let mut text = state.metrics.render();
    instance_gauges(snapshot, None, &mut text);
    if let Some(status) = state.catalog() {
        catalog_metrics(&status, &mut text);
    }
    dashboard_metrics(&state.streams, &mut text);
    metrics_text(text)
}

/// `anyedge_admin_streams`, `anyedge_admin_streams_dropped_total`,
/// `anyedge_admin_stream_updates_total` and `anyedge_admin_stream_updates_skipped_total`.
fn dashboard_metrics(streams: &stream::Streams, out: &mut String) {
    use std::fmt::Write;
    let (open, dropped, updates, skipped) = (
        streams.len(),
        streams.dropped_slow(),
        streams.updates(),
        streams.updates_skipped(),
    );
    let _ = write!(
        out,
        "# HELP anyedge_admin_streams Live dashboard streams open.\n\
         # TYPE anyedge_admin_streams gauge\n\
         anyedge_admin_streams {open}\n\
         # HELP anyedge_admin_streams_dropped_total Live dashboard streams closed because the page did not keep up.\n\
         # TYPE anyedge_admin_streams_dropped_total counter\n\
         anyedge_admin_streams_dropped_total {dropped}\n\
         # HELP anyedge_admin_stream_updates_total Updates sent to the live dashboard streams (each one picture per open view).\n\
         # TYPE anyedge_admin_stream_updates_total counter\n\
         anyedge_admin_stream_updates_total {updates}\n\
         # HELP anyedge_admin_stream_updates_skipped_total Update intervals skipped because the node was more than a second behind its cadence (the next picture stood for them).\n\
         # TYPE anyedge_admin_stream_updates_skipped_total counter\n\
         anyedge_admin_stream_updates_skipped_total {skipped}\n"
    );
}

fn health(state: &AdminState) -> Response<AdminBody> {
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
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(format!("{body}\n")))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An app's series, for its owners (`owner_allowed` checked the token).
fn app_metrics(state: &AdminState, snapshot: &Snapshot, app: &AppEntry) -> Response<AdminBody> {
    let mut text = state.metrics.render_app(&app.name);
    instance_gauges(snapshot, Some(&app.name), &mut text);
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

fn metrics_text(body: String) -> Response<AdminBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body))));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp
}
