//! A node's lifecycle: start the edge, the health checks, the ACME task and the admin listener;
//! put a new config in force; drain. `run.rs` drives it for `anyedge run` (signals, file and
//! catalog changes).

use crate::admin::{self, AdminState};
use anyedge_catalog::{LiveRegistry, Snapshot};
use anyedge_config::Config;
use anyedge_core::control::{Inherited, ListenKey, Role};
use anyedge_core::Drain;
use anyedge_edge::{Drivers, Edge, HandoverSocket, HealthChecker, ListenError};
use anyedge_telemetry::Metrics;
use anyedge_tls::acme::{wanted_hostnames, AcmeManager, AcmeSettings, WantedHostnames};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
    #[error("{0}")]
    Steering(anyedge_edge::SteerError),
    #[error("{0}")]
    Spill(anyedge_edge::SpillDirError),
}

/// What a node takes over from the process it replaces (`anyedge run --upgrade`); the default
/// is a fresh start.
#[derive(Debug, Default, Clone)]
pub struct Takeover {
    /// Listening sockets, claimed by address as the node opens its listeners.
    pub sockets: Arc<Inherited>,
    /// The previous process's generation (0: none).
    pub generation: u64,
    /// The previous process's TLS ticket keys (empty: none).
    pub tickets: Vec<u8>,
}

/// One running node.
pub struct Node {
    edge: Edge,
    /// Active checks, on the runtime the node was started on (the control runtime).
    health: HealthChecker,
    /// Starts and stops of instances with a driver (`docs/on-demand.md`), on the control
    /// runtime too.
    drivers: Drivers,
    registry: Arc<LiveRegistry>,
    metrics: Arc<Metrics>,
    drain: Drain,
    snapshot: Mutex<Arc<Snapshot>>,
    admin: Arc<AdminState>,
    admin_addr: SocketAddr,
    /// The admin address as asked for (the key it is handed over by), a copy of its socket,
    /// and what stops its accept loop.
    admin_key: SocketAddr,
    admin_fd: OwnedFd,
    admin_stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Certificates for hostnames without a static one (`[acme] state_dir` set, or `[acme]`
    /// on the etcd store), on the control runtime.
    acme: Option<AcmeManager>,
    /// The hostnames handed to the ACME task (or warned about), as of a generation: updated
    /// by each reload's diff ([`Node::update_acme`]).
    acme_wanted: Mutex<Option<(u64, WantedHostnames)>>,
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
        Self::start_taking_over(config, admin_listen, shards, Takeover::default()).await
    }

    /// Like [`Node::start_on`], listening on the sockets `from` holds where the addresses
    /// match (binding the others), and closing those the config no longer has.
    pub async fn start_taking_over(
        config: Config,
        admin_listen: Option<SocketAddr>,
        shards: Vec<tokio::runtime::Handle>,
        from: Takeover,
    ) -> Result<Node, StartError> {
        let metrics = Metrics::new();
        metrics
            .node
            .process_generation
            .store(from.generation + 1, Ordering::Relaxed);
        let drain = Drain::new();
        let registry = LiveRegistry::new();
        let config = Arc::new(config);
        let snapshot = Arc::new(Snapshot::build(config.clone(), &registry, None));
        let edge = Edge::inheriting(
            metrics.clone(),
            drain.clone(),
            &config.limits,
            shards,
            from.sockets.clone(),
        )
        .map_err(StartError::Tls)?;
        if config.node.roles.edge {
            match edge.start_spill(&config.http) {
                Ok(()) => {}
                // The default directory is shared by every user of the machine: one that
                // another user made (or a read-only /var/tmp) turns spilling off with a
                // warning instead of stopping the node. A directory the config names must work.
                Err(e)
                    if config.http.replay_spill_dir
                        == anyedge_config::Http::default().replay_spill_dir =>
                {
                    tracing::warn!(error = %e, "request bodies past replay_body_limit are not kept on disk (set [http] replay_spill_dir to a directory this user owns)");
                }
                Err(e) => return Err(StartError::Spill(e)),
            }
        }
        if !from.tickets.is_empty() && !edge.import_ticket_keys(&from.tickets) {
            tracing::warn!("the previous process's TLS ticket keys were not usable: sessions it issued will not resume");
        }
        let admin = Arc::new(AdminState::new(
            metrics.clone(),
            drain.clone(),
            snapshot.clone(),
        ));
        let addr = admin_listen.unwrap_or(config.admin.listen);
        let inherited_admin = from
            .sockets
            .take(Role::Admin, ListenKey::Addr(addr))
            .and_then(|fds| fds.into_iter().next());
        let admin_listener = admin::serve(addr, inherited_admin, admin.clone())
            .map_err(|source| StartError::Admin { addr, source })?;
        let admin_addr = admin_listener.local;
        if config.node.steering == anyedge_config::Steering::SkLookup && config.node.roles.edge {
            edge.start_steering(&config.node)
                .map_err(StartError::Steering)?;
        }
        let errors = edge.apply(snapshot.clone());
        for (role, key) in from.sockets.close_unclaimed() {
            tracing::info!(role = role.as_str(), %key, "a listener handed over is not in this config: closed");
        }
        if !errors.is_empty() {
            drain.start();
            edge.abandon_start();
            return Err(StartError::Listeners(errors));
        }
        admin.set_listening(edge.listening());
        let health = HealthChecker::new(tokio::runtime::Handle::current(), metrics.clone());
        health.update(&snapshot);
        let drivers = Drivers::new(tokio::runtime::Handle::current(), metrics.clone());
        drivers.update(&snapshot);
        let acme = match start_acme(&config, &edge, &metrics).await {
            Ok(acme) => acme,
            Err(e) => {
                drain.start();
                edge.abandon_start();
                return Err(e);
            }
        };
        metrics
            .node
            .config_generation
            .store(snapshot.generation, Ordering::Relaxed);
        tracing::info!(node = %config.node.id, region = %config.node.region, apps = config.apps.len(), admin = %admin_addr, "node started");
        let wanted = (
            snapshot.generation,
            WantedHostnames::of(&snapshot.config, edge.static_certs()),
        );
        Ok(Node {
            edge,
            health,
            drivers,
            registry,
            metrics,
            drain,
            snapshot: Mutex::new(snapshot),
            admin,
            admin_addr,
            admin_key: addr,
            admin_fd: admin_listener.fd,
            admin_stop: Mutex::new(Some(admin_listener.stop)),
            acme,
            acme_wanted: Mutex::new(Some(wanted)),
        })
    }

    /// Every listening socket: app ports, the steering and backhaul listeners, the admin
    /// listener (a copy of its descriptor).
    pub fn handover_sockets(&self) -> std::io::Result<Vec<(Role, ListenKey, Vec<HandoverSocket>)>> {
        let mut sockets = self.edge.handover_sockets()?;
        sockets.push((
            Role::Admin,
            ListenKey::Addr(self.admin_key),
            vec![HandoverSocket::Copy(self.admin_fd.try_clone()?)],
        ));
        Ok(sockets)
    }

    /// This process's TLS ticket keys, for the process taking over.
    pub fn ticket_keys(&self) -> Vec<u8> {
        self.edge.export_ticket_keys()
    }

    /// A new process serves on the sockets handed over: stop accepting admin requests too
    /// (the app and backhaul listeners stop with the drain).
    pub fn handed_over(&self) {
        self.edge.handed_over();
        self.admin_stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
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
        self.drivers.update(&next);
        self.update_acme(&next);
        self.metrics
            .node
            .config_generation
            .store(next.generation, Ordering::Relaxed);
        self.metrics.node.reloads_ok.fetch_add(1, Ordering::Relaxed);
        self.admin.set_snapshot(next.clone());
        self.admin.set_listening(self.edge.listening());
        self.admin.set_reload_error(None);
        tracing::info!(
            generation = next.generation,
            apps = next.apps.len(),
            "config reloaded"
        );
        *current = next;
        errors
    }

    /// Hand the ACME task the hostnames of `next` that need a certificate, when they changed:
    /// updated by the snapshot's diff when it was built on the snapshot they were taken from
    /// and the static certificates are the same, else taken from every app.
    fn update_acme(&self, next: &Snapshot) {
        let store = self.edge.static_certs();
        let mut kept = self
            .acme_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = match (kept.as_mut(), &next.diff) {
            (Some((generation, wanted)), Some(diff))
                if diff.since == *generation && wanted.judged_on(&store) =>
            {
                let mut changed = false;
                for name in diff.built.iter().chain(&diff.gone) {
                    let app = next.app(name).map(|e| &*e.config);
                    changed |= wanted.set_app(name, app);
                }
                *generation = next.generation;
                changed
            }
            _ => {
                *kept = Some((next.generation, WantedHostnames::of(&next.config, store)));
                true
            }
        };
        let Some((_, wanted)) = kept.as_ref().filter(|_| changed) else {
            return;
        };
        let wanted = wanted.hostnames();
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
        // Each loop ends at its next poll; what it accepted before is counted by then.
        let loops = self
            .edge
            .accept_loops_ended(grace.min(Duration::from_secs(5)))
            .await;
        if loops > 0 {
            tracing::warn!(loops, "accept loops still running; draining without them");
        }
        let open = self.drain.open_connections();
        tracing::info!(open, grace = ?grace, "draining");
        let left = self.drain.wait_idle(grace).await;
        self.health.stop();
        self.drivers.stop();
        if let Some(acme) = &self.acme {
            acme.stop();
        }
        left
    }

    /// An instance's power state (`running`, `starting`, `stopping`, `stopped`, `failed`) in
    /// the snapshot in force; `None` if the catalog has no such instance.
    pub fn instance_state(&self, app: &str, instance: &str) -> Option<&'static str> {
        let snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        let app = snapshot.app(app)?;
        let i = app.instance_index(instance)?;
        Some(app.instances[i].live.power.state().as_str())
    }

    /// Driver tasks running now (one per instance with a driver on this node).
    pub fn driver_tasks(&self) -> usize {
        self.drivers.running()
    }

    /// Active checks running now (one per instance, service and check).
    pub fn health_checks(&self) -> usize {
        self.health.running()
    }

    /// This node leaves the catalog: its load feeds end first (`Edge::leave`).
    pub fn leave(&self) {
        self.edge.leave();
    }

    /// Whether the worker `peer` reports the instance `<app>/<id>` over a live load feed (the
    /// catalog's grace rule, `anyedge_store::state::grace`).
    pub fn feed_reports(&self, peer: &str, instance: &str) -> bool {
        self.edge.feed_reports(peer, instance)
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
    if old.node.control_socket != new.node.control_socket {
        tracing::warn!("[node] control_socket changes only on restart (or upgrade)");
    }
    if (old.node.steering, &old.node.bpf_pin_dir) != (new.node.steering, &new.node.bpf_pin_dir) {
        tracing::warn!("[node] steering and bpf_pin_dir change only on restart");
    }
    if old.admin.listen != new.admin.listen {
        tracing::warn!("[admin] listen changes only on restart");
    }
}

pub(crate) fn apply(node: &Node, config: Config) {
    for e in node.reload(config) {
        tracing::error!(error = %e, "listener not opened; will retry on the next reload");
    }
}
