//! A node's lifecycle: load and validate config without binding anything, build the runtime,
//! start the edge, the health checks and the admin listener, reload on SIGHUP or a file change,
//! drain on SIGTERM/SIGINT.

use crate::admin::{self, AdminState};
use crate::cli::RunArgs;
use crate::cluster::{self, EtcdFeed};
use anyedge_catalog::{LiveRegistry, Snapshot};
use anyedge_config::Config;
use anyedge_core::Drain;
use anyedge_edge::{Edge, HealthChecker, ListenError};
use anyedge_telemetry::Metrics;
use anyedge_tls::acme::{wanted_hostnames, AcmeManager, AcmeSettings};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for admin requests on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Listeners(Vec<ListenError>),
    #[error("TLS set-up failed: {0}")]
    Tls(anyedge_edge::TlsSetupError),
    #[error("ACME: {0}")]
    Acme(String),
}

/// One running node.
pub struct Node {
    edge: Edge,
    /// Active checks, on the runtime the node was started on (the control runtime).
    health: HealthChecker,
    registry: Arc<LiveRegistry>,
    metrics: Arc<Metrics>,
    drain: Drain,
    snapshot: Mutex<Arc<Snapshot>>,
    admin: Arc<AdminState>,
    admin_addr: SocketAddr,
    /// Certificates for hostnames without a static one (`[acme] state_dir` set, or `[acme]`
    /// on the etcd store), on the control runtime.
    acme: Option<AcmeManager>,
}

impl Node {
    /// Bind the admin listener and every app listener of `config`, and start serving on the
    /// current runtime.
    pub async fn start(
        config: Config,
        admin_listen: Option<SocketAddr>,
    ) -> Result<Node, StartError> {
        Self::start_on(config, admin_listen, Vec::new()).await
    }

    /// Like [`Node::start`], with connections served on `shards` (one runtime per core).
    pub async fn start_on(
        config: Config,
        admin_listen: Option<SocketAddr>,
        shards: Vec<tokio::runtime::Handle>,
    ) -> Result<Node, StartError> {
        let metrics = Metrics::new();
        let drain = Drain::new();
        let registry = LiveRegistry::new();
        let config = Arc::new(config);
        let snapshot = Arc::new(Snapshot::build(config.clone(), &registry, None));
        let edge = Edge::new(metrics.clone(), drain.clone(), &config.limits, shards)
            .map_err(StartError::Tls)?;
        let admin = Arc::new(AdminState::new(
            metrics.clone(),
            drain.clone(),
            snapshot.clone(),
        ));
        let addr = admin_listen.unwrap_or(config.admin.listen);
        let admin_addr = admin::serve(addr, admin.clone())
            .await
            .map_err(|source| StartError::Admin { addr, source })?;
        let errors = edge.apply(snapshot.clone());
        if !errors.is_empty() {
            drain.start();
            edge.stop_accepting();
            return Err(StartError::Listeners(errors));
        }
        let health = HealthChecker::new(tokio::runtime::Handle::current(), metrics.clone());
        health.update(&snapshot);
        let acme = match start_acme(&config, &edge, &metrics).await {
            Ok(acme) => acme,
            Err(e) => {
                drain.start();
                edge.stop_accepting();
                return Err(e);
            }
        };
        metrics
            .node
            .config_generation
            .store(snapshot.generation, Ordering::Relaxed);
        tracing::info!(node = %config.node.id, region = %config.node.region, apps = config.apps.len(), admin = %admin_addr, "node started");
        Ok(Node {
            edge,
            health,
            registry,
            metrics,
            drain,
            snapshot: Mutex::new(snapshot),
            admin,
            admin_addr,
            acme,
        })
    }

    /// Put a new config in force as a diff. Open connections are untouched.
    pub fn reload(&self, config: Config) -> Vec<ListenError> {
        let mut current = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        warn_restart_only(&current.config, &config);
        let next = Arc::new(Snapshot::build(
            Arc::new(config),
            &self.registry,
            Some(&current),
        ));
        let errors = self.edge.apply(next.clone());
        self.health.update(&next);
        self.update_acme(&next.config);
        self.metrics
            .node
            .config_generation
            .store(next.generation, Ordering::Relaxed);
        self.metrics.node.reloads_ok.fetch_add(1, Ordering::Relaxed);
        self.admin.set_snapshot(next.clone());
        self.admin.set_reload_error(None);
        tracing::info!(
            generation = next.generation,
            apps = next.apps.len(),
            "config reloaded"
        );
        *current = next;
        errors
    }

    /// Hand the ACME task the hostnames of `config` that need a certificate.
    fn update_acme(&self, config: &Config) {
        let wanted = wanted_hostnames(config, &self.edge.static_certs());
        match &self.acme {
            Some(acme) => acme.set_hostnames(wanted),
            None => warn_no_acme(&wanted),
        }
    }

    /// With the etcd store: report the catalog's connection and staleness on the admin port.
    pub fn set_catalog_status(&self, status: Arc<anyedge_store::CatalogStatus>) {
        self.admin.set_catalog_status(status);
    }

    /// Count and report a config that could not be loaded; the one in force stays.
    pub fn reload_failed(&self, problem: String) {
        self.metrics
            .node
            .reloads_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(problems = %problem.trim_end(), "config rejected; the previous config stays in force");
        self.admin.set_reload_error(Some(problem));
    }

    /// Stop accepting, let open connections finish for up to `grace`, and return how many were
    /// still open when it ran out. Health checks go on while draining (requests on connections
    /// still open are placed too) and stop at the end.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.drain.start();
        self.edge.stop_accepting();
        let open = self.drain.open_connections();
        tracing::info!(open, grace = ?grace, "draining");
        let left = self.drain.wait_idle(grace).await;
        self.health.stop();
        if let Some(acme) = &self.acme {
            acme.stop();
        }
        left
    }

    /// Active checks running now (one per instance, service and check).
    pub fn health_checks(&self) -> usize {
        self.health.running()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn listening(&self) -> Vec<SocketAddr> {
        self.edge.listening()
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> u32 {
        self.edge.open_connections()
    }

    /// Pipes held in the splice pool (two descriptors each).
    pub fn idle_pipes(&self) -> usize {
        self.edge.idle_pipes()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn drain_timeout(&self) -> Duration {
        self.snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config
            .node
            .drain_timeout
    }
}

/// The ACME task, when `[acme] state_dir` is set (or `[acme]` on the etcd store), with the
/// hostnames of `config` that need a certificate.
async fn start_acme(
    config: &Config,
    edge: &Edge,
    metrics: &Arc<Metrics>,
) -> Result<Option<AcmeManager>, StartError> {
    let wanted = wanted_hostnames(config, &edge.static_certs());
    let Some(storage) =
        crate::acme::storage(config, edge.challenges()).map_err(StartError::Acme)?
    else {
        warn_no_acme(&wanted);
        return Ok(None);
    };
    let settings = AcmeSettings::from_config(&config.acme);
    tracing::info!(directory = %config.acme.directory, storage = %storage.store.describe(), hostnames = wanted.len(), "ACME enabled");
    let tls_443 = config
        .apps
        .iter()
        .flat_map(|a| &a.services)
        .flat_map(|s| &s.ports)
        .any(|p| p.port == 443 && p.handlers.contains(&anyedge_config::Handler::Tls));
    if !wanted.is_empty() && !tls_443 {
        tracing::warn!("no tls port 443 on this node: a public CA validates TLS-ALPN-01 there (a test CA may use another port)");
    }
    let acme = AcmeManager::start(
        settings,
        storage,
        edge.dynamic_certs().clone(),
        edge.challenges().clone(),
        metrics.clone(),
        wanted,
        &tokio::runtime::Handle::current(),
    )
    .await;
    Ok(Some(acme))
}

fn warn_no_acme(wanted: &BTreeSet<String>) {
    if !wanted.is_empty() {
        let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
        tracing::warn!(hostnames = %names.join(", "), "no certificate for these TLS hostnames and ACME is off (set [acme] state_dir, or [acme] on the etcd store): their handshakes fail");
    }
}

fn warn_restart_only(old: &Config, new: &Config) {
    if old.acme != new.acme {
        tracing::warn!("[acme] changes only on restart");
    }
    if old.node.threads != new.node.threads {
        tracing::warn!("[node] threads changes only on restart");
    }
    if old.admin.listen != new.admin.listen {
        tracing::warn!("[admin] listen changes only on restart");
    }
}

/// `anyedge run`: exit 1 on a bad config or a port that cannot be opened.
pub fn run(args: &RunArgs) -> ExitCode {
    let config = match anyedge_config::load(&args.config) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            return ExitCode::FAILURE;
        }
    };
    let runtimes = build_control_runtime()
        .and_then(|control| Ok((control, Shards::start(config.node.threads)?)));
    let (control, shards) = match runtimes {
        Ok(rts) => rts,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    control.block_on(serve(config, args, shards.handles()))
}

/// The runtime for signals, reloads and the admin listener: light work, one thread.
fn build_control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// One single-threaded runtime per core, each on its own thread: a connection lives on one
/// thread from accept to close, with no work stealing or cross-thread wake-ups (PITFALLS.md:
/// this costs less CPU per request than a multi-thread runtime). Built after the config is
/// read, so `[node] threads` takes effect (0: one per CPU).
pub struct Shards {
    handles: Vec<tokio::runtime::Handle>,
}

impl Shards {
    pub fn start(threads: usize) -> std::io::Result<Shards> {
        let n = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("anyedge-shard-{i}"))
                .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        }
        Ok(Shards { handles })
    }

    pub fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.handles.clone()
    }
}

/// A multi-thread runtime (the demo's: it runs instances and the edge together).
pub fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("anyedge-worker")
        .enable_all()
        .build()
}

async fn serve(config: Config, args: &RunArgs, shards: Vec<tokio::runtime::Handle>) -> ExitCode {
    // First of all: a SIGHUP while the node starts (the catalog's first listing may take
    // seconds) must not end the process, as its default action would.
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let mut base = Arc::new(config);
    let (node, mut feed) = match cluster::start_node(&base, args.admin_listen, shards).await {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let mut changes = crate::watch::FileWatch::new(&args.config);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                reload_from(&node, &args.config, &mut base, feed.as_mut());
            }
            _ = changes.changed() => reload_from(&node, &args.config, &mut base, feed.as_mut()),
            _ = cluster::changed(&mut feed) => {
                if let Some(f) = feed.as_mut() {
                    apply(&node, f.config(&base));
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Leave the catalog first, so other nodes stop sending here while this one drains.
    if let Some(f) = feed {
        f.stop().await;
    }
    let grace = node.drain_timeout();
    let drained = tokio::select! {
        left = node.shutdown(grace) => left,
        _ = term.recv() => usize::MAX,
        _ = int.recv() => usize::MAX,
    };
    match drained {
        0 => tracing::info!("drained; exiting"),
        usize::MAX => tracing::warn!("second signal; exiting now"),
        left => tracing::warn!(
            left,
            "grace period over; closing the connections still open"
        ),
    }
    ExitCode::SUCCESS
}

/// Read the node's file again. With the etcd store the file holds the node's own sections and
/// instances: they are registered anew and joined with the catalog's apps.
fn reload_from(node: &Node, path: &Path, base: &mut Arc<Config>, feed: Option<&mut EtcdFeed>) {
    let config = match anyedge_config::load(path) {
        Ok(config) => config,
        Err(diagnostics) => return node.reload_failed(diagnostics.to_string()),
    };
    if config.catalog != base.catalog {
        return node.reload_failed(
            "[catalog] changes only on restart; the file was not reloaded\n".to_string(),
        );
    }
    *base = Arc::new(config);
    match feed {
        Some(f) => {
            f.update(base.clone());
            apply(node, f.config(base));
        }
        None => apply(node, (**base).clone()),
    }
}

pub(crate) fn apply(node: &Node, config: Config) {
    for e in node.reload(config) {
        tracing::error!(error = %e, "listener not opened; will retry on the next reload");
    }
}
