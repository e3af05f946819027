//! The edge: where clients connect. Listeners are opened and closed by diffing catalog snapshots
//! (a file reload and, later, an etcd event take the same path); each accepted connection is
//! routed by its local address and port, admitted against the node, client-IP and app budgets,
//! placed on an instance, and proxied. Active health checks run beside it ([`HealthChecker`]),
//! diffed by snapshot the same way.

mod admit;
mod backhaul;
mod error;
mod front;
#[doc(hidden)]
pub mod fuzz;
mod h2server;
mod health;
mod instance;
mod policy;
mod pooled;
mod routes;
mod sockets;
mod wake;
mod worker;

pub use instance::proxy_protocol;

pub(crate) use pooled::in_pool;

pub use anyedge_steering::SteerError;
pub use front::listeners::ListenError;
pub use health::{CheckState, HealthChecker, HealthUpdate, Transition};
pub use instance::spill::SpillDirError;
pub use sockets::{adopt as adopt_listener, HandoverSocket};
pub use wake::Drivers;
/// Why the edge's TLS state could not be made.
pub type TlsSetupError = anyedge_tls::rustls::Error;

use anyedge_admission::{Budget, PerKeyBudget};
use anyedge_catalog::Snapshot;
use anyedge_core::control::{Inherited, ListenKey, Role};
use anyedge_core::Drain;
use anyedge_telemetry::Metrics;
use arc_swap::ArcSwap;
use front::listeners::ListenerSet;
use routes::Routes;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

/// State shared by every listener and connection of one node's edge.
struct Shared {
    routes: ArcSwap<Routes>,
    metrics: Arc<Metrics>,
    drain: Drain,
    /// Open client connections on this node (`[limits] max_connections`).
    node_connections: Budget,
    per_ip: PerKeyBudget<IpAddr>,
    resolver: instance::connect::Resolver,
    pipes: instance::relay::PipePool,
    bufs: instance::relay::BufPool,
    mover: instance::relay::Mover,
    /// Connections to instances, by stable instance id.
    pools: instance::pool::Pools,
    /// TLS session cache and ticket keys: one per process, so resumption survives reloads.
    tls: anyedge_tls::TlsShared,
    /// Certificates added at run time (ACME), shared by every snapshot's resolver.
    dynamic_certs: Arc<anyedge_tls::DynamicCerts>,
    /// Pending TLS-ALPN-01 challenges, answered on every TLS port.
    challenges: Arc<anyedge_tls::acme::Challenges>,
    handshakes: anyedge_tls::HandshakeLimits,
    /// The runtimes connections run on: one listener socket per shard and address.
    shards: Vec<tokio::runtime::Handle>,
    /// Links to the workers that run remote instances, and this node's cluster identity.
    backhaul: backhaul::Backhaul,
    /// Listening sockets handed over by the previous process, claimed as listeners open.
    inherited: Arc<Inherited>,
    /// This process handed its listeners to a new one (`anyedge run --upgrade`), which now
    /// takes new connections at the same addresses: while draining, the worker still serves
    /// the streams that reach it on its old backhaul connections (`worker::admit`).
    handed_over: std::sync::atomic::AtomicBool,
    /// Where request bodies past `replay_body_limit` are kept (`Edge::start_spill`); unset:
    /// they are not kept. Leaked on purpose, one per edge (a few hundred bytes; a process
    /// makes one, a test process a few): requests reach it by a plain reference, where a
    /// shared count would be one more atomic, contended across shards, per request with a body.
    spill: std::sync::OnceLock<&'static instance::spill::SpillStore>,
    /// Accept loops running (each holds a guard): a drain counts open connections only once
    /// they have all ended, so none it accepted goes uncounted ([`Edge::accept_loops_ended`]).
    accept_loops: Drain,
}

/// One node's edge role.
pub struct Edge {
    shared: Arc<Shared>,
    listeners: Mutex<ListenerSet>,
    /// With `[node] steering = "sk_lookup"`: the steered listeners, in place of `listeners`.
    steered: Mutex<Option<front::steered::SteeredSet>>,
    /// The worker role's backhaul listener, when this node has one.
    backhaul_listener: Mutex<Option<worker::BackhaulListener>>,
}

impl Edge {
    /// `shards` are the runtimes that accept and serve connections (empty: the current one).
    /// Fails only when the TLS ticket keys cannot be made (no system randomness).
    pub fn new(
        metrics: Arc<Metrics>,
        drain: Drain,
        limits: &anyedge_config::Limits,
        shards: Vec<tokio::runtime::Handle>,
    ) -> Result<Self, anyedge_tls::rustls::Error> {
        Self::inheriting(metrics, drain, limits, shards, Arc::default())
    }

    /// Like [`Edge::new`], opening listeners on the sockets of `inherited` (handed over by the
    /// previous process) where their addresses match, rather than binding new ones.
    pub fn inheriting(
        metrics: Arc<Metrics>,
        drain: Drain,
        limits: &anyedge_config::Limits,
        mut shards: Vec<tokio::runtime::Handle>,
        inherited: Arc<Inherited>,
    ) -> Result<Self, anyedge_tls::rustls::Error> {
        anyedge_tls::install_crypto_provider();
        if shards.is_empty() {
            shards.push(tokio::runtime::Handle::current());
        }
        let shared = Arc::new(Shared {
            routes: ArcSwap::from_pointee(Routes::default()),
            metrics,
            drain,
            node_connections: Budget::new(),
            per_ip: PerKeyBudget::new(),
            resolver: instance::connect::Resolver::default(),
            pipes: instance::relay::PipePool::default(),
            bufs: instance::relay::BufPool::default(),
            // Measured on loopback (bench/results): read/write through a small pooled buffer
            // moved more than splice(2), whose cost lands on the receiving side. Splice stays
            // for comparison: ANYEDGE_TCP_MOVER=splice (and ANYEDGE_TCP_BUF_KIB another
            // buffer size).
            mover: match std::env::var("ANYEDGE_TCP_MOVER").as_deref() {
                Ok("splice") => instance::relay::Mover::Splice,
                _ => instance::relay::Mover::Copy,
            },
            pools: instance::pool::Pools::default(),
            tls: anyedge_tls::TlsShared::new()?,
            dynamic_certs: Arc::new(anyedge_tls::DynamicCerts::new()),
            challenges: Arc::new(anyedge_tls::acme::Challenges::new()),
            handshakes: anyedge_tls::HandshakeLimits::from_config(limits),
            shards,
            backhaul: backhaul::Backhaul::default(),
            inherited,
            handed_over: std::sync::atomic::AtomicBool::new(false),
            spill: std::sync::OnceLock::new(),
            accept_loops: Drain::new(),
        });
        Ok(Edge {
            shared,
            listeners: Mutex::new(ListenerSet::default()),
            steered: Mutex::new(None),
            backhaul_listener: Mutex::new(None),
        })
    }

    /// Steer every app port to one listener per family with `sk_lookup` from now on
    /// (`[node] steering = "sk_lookup"`, before the first [`Edge::apply`]): load the program
    /// or take the pinned one over, and open the listeners (or adopt those handed over) and
    /// steer to them. They are accepted from only once the first [`Edge::apply`] has put
    /// routes in force: until then connections wait in their accept queues. An error says
    /// what the machine lacks and how to fix it; there is no fallback to sockets.
    pub fn start_steering(
        &self,
        node: &anyedge_config::Node,
    ) -> Result<(), anyedge_steering::SteerError> {
        let set = front::steered::SteeredSet::start(node, &self.shared)?;
        *self.steered.lock().unwrap_or_else(PoisonError::into_inner) = Some(set);
        Ok(())
    }

    /// Keep request bodies past `replay_body_limit` in `http.replay_spill_dir`, up to
    /// `replay_spill_limit` bytes on this node (0: not at all), from now on: the directory is
    /// made if missing, checked, and cleared of what a crash left. Called once, at start-up;
    /// a reload may change the cap, not the directory.
    pub fn start_spill(&self, http: &anyedge_config::Http) -> Result<(), SpillDirError> {
        if http.replay_spill_limit == 0 || self.shared.spill.get().is_some() {
            return Ok(());
        }
        let store = instance::spill::SpillStore::open(
            &http.replay_spill_dir,
            http.replay_spill_limit,
            self.shared.metrics.clone(),
        )?;
        let _ = self.shared.spill.set(Box::leak(Box::new(store)));
        Ok(())
    }

    /// Put a snapshot in force: new connections route by it at once; listeners it no longer
    /// names close, new ones open. Connections already open are untouched. Returns the
    /// listeners that could not be opened (they are tried again on the next apply).
    pub fn apply(&self, snapshot: Arc<Snapshot>) -> Vec<ListenError> {
        let tls = self.tls_server(&snapshot);
        self.shared
            .backhaul
            .configure(snapshot.config.cluster.as_ref());
        let prev = self.shared.routes.load_full();
        let routes = Arc::new(Routes::build(
            &snapshot,
            prev.snapshot.is_some().then_some(&*prev),
            &self.shared.metrics,
            &self.shared.pools,
            &self.shared.backhaul,
            tls,
        ));
        if let Some(spill) = self.shared.spill.get() {
            let http = &snapshot.config.http;
            if http.replay_spill_dir != spill.dir() {
                tracing::warn!(dir = %spill.dir().display(), "[http] replay_spill_dir changes at the next start, not on a reload");
            }
            spill.set_limit(http.replay_spill_limit);
        }
        let wanted = routes.listen_addrs();
        let m = &self.shared.metrics.node;
        m.apps_built.fetch_add(
            snapshot.rebuilt as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        m.http_services_built
            .fetch_add(routes.built as u64, std::sync::atomic::Ordering::Relaxed);
        self.shared.routes.store(routes);
        self.shared.backhaul.starts.update(&snapshot, &self.shared);
        // Instances that moved start afresh now that requests go to where they are: cleared
        // earlier, requests still routed to the old address would earn the backoff again.
        for live in &snapshot.moved {
            live.connect_succeeded();
        }
        let mut errors = self.apply_backhaul_listener(&snapshot.config);
        let mut steered = self.steered.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(steered) = steered.as_mut() {
            if !self.shared.drain.is_draining() {
                errors.extend(steered.apply(&wanted, &self.shared));
            }
            return errors;
        }
        drop(steered);
        let mut set = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        errors.extend(set.apply(&wanted, &self.shared));
        errors
    }

    /// Open, move or close the backhaul listener: open while the node is a worker with a
    /// `backhaul_listen` address and cluster certificates.
    fn apply_backhaul_listener(&self, config: &anyedge_config::Config) -> Vec<ListenError> {
        let want = config
            .node
            .backhaul_listen
            .filter(|_| config.node.roles.worker && self.shared.backhaul.tls.load().is_some());
        let mut current = self
            .backhaul_listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().map(|l| l.addr) == want {
            return Vec::new();
        }
        *current = None;
        let Some(addr) = want else {
            return Vec::new();
        };
        match worker::start(addr, &self.shared) {
            Ok(l) => {
                *current = Some(l);
                Vec::new()
            }
            Err(source) => vec![ListenError {
                addr: addr.to_string(),
                source,
            }],
        }
    }

    /// Where the backhaul listener listens (its bound address), if it is open.
    pub fn backhaul_addr(&self) -> Option<SocketAddr> {
        self.backhaul_listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|l| l.bound)
    }

    /// The certificates of a snapshot, loaded once for it (the previous server's when there
    /// are none to load). A pair that fails to load is logged
    /// and skipped; the others serve.
    fn tls_server(&self, snapshot: &Snapshot) -> Arc<anyedge_tls::TlsServer> {
        // No app configures a certificate, and none did: nothing to load again (at 100,000
        // apps the walk over every app for none was a few percent of an etcd change's CPU).
        // With any, every pair is loaded again, so a reload reads certificate files replaced
        // in place.
        if snapshot.certified == 0 {
            let prev = self.shared.routes.load();
            if let Some(tls) = prev
                .tls
                .as_ref()
                .filter(|t| t.resolver().store().is_empty())
            {
                return tls.clone();
            }
        }
        let (store, errors) = anyedge_tls::CertStore::load(&snapshot.config);
        for e in &errors {
            tracing::error!(error = %e, "certificate not loaded");
        }
        self.shared.metrics.set_cert_expiries(store.expiries());
        let resolver =
            anyedge_tls::SniResolver::new(Arc::new(store), self.shared.dynamic_certs.clone());
        let server = anyedge_tls::TlsServer::new(Arc::new(resolver), &self.shared.tls)
            .with_acme(self.shared.challenges.clone(), &self.shared.tls);
        Arc::new(server)
    }

    /// Certificates issued at run time (ACME): served at once on every TLS port.
    pub fn dynamic_certs(&self) -> &Arc<anyedge_tls::DynamicCerts> {
        &self.shared.dynamic_certs
    }

    /// Pending TLS-ALPN-01 challenges: answered at once on every TLS port.
    pub fn challenges(&self) -> &Arc<anyedge_tls::acme::Challenges> {
        &self.shared.challenges
    }

    /// The static certificates of the snapshot in force (empty before the first apply).
    pub fn static_certs(&self) -> Arc<anyedge_tls::CertStore> {
        match &self.shared.routes.load().tls {
            Some(tls) => tls.resolver().store().clone(),
            None => Arc::default(),
        }
    }

    /// Close every listener of a node that failed to start. With `sk_lookup` the program stays
    /// attached (its listeners leave the sockmap as they close, so nothing steers to them): in
    /// an upgrade that failed, the running node still depends on that link.
    pub fn abandon_start(&self) {
        self.close(true);
    }

    /// Close every listener (the node is stopping). Open connections go on.
    pub fn stop_accepting(&self) {
        let handed_over = self
            .shared
            .handed_over
            .load(std::sync::atomic::Ordering::SeqCst);
        self.close(handed_over);
    }

    /// Wait, up to `bound`, until every accept loop has ended (after [`Edge::stop_accepting`]
    /// or the drain's start): a connection accepted until then has been admitted and counted
    /// as open by the drain. Counted any earlier, a connection accepted in the meantime
    /// (one accept can complete between the drain's start and the loop seeing it) could go
    /// unseen, and the process exit with it unserved. Returns how many loops were left.
    pub async fn accept_loops_ended(&self, bound: std::time::Duration) -> usize {
        self.shared.accept_loops.wait_idle(bound).await
    }

    /// Close every listener; with `keep_steering`, leave the `sk_lookup` program attached.
    fn close(&self, keep_steering: bool) {
        let mut set = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.close_all(&self.shared);
        drop(set);
        if let Some(steered) = self
            .steered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            steered.close_all(&self.shared, keep_steering);
        }
    }

    /// A new process serves on this one's listening sockets: a drain from now on serves what
    /// still reaches this process rather than refusing it as a stopping worker does.
    pub fn handed_over(&self) {
        self.shared
            .handed_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The TLS ticket keys, for the process taking over.
    pub fn export_ticket_keys(&self) -> Vec<u8> {
        self.shared.tls.export_ticket_keys()
    }

    /// Use the ticket keys of the process this one takes over from; false if they do not read.
    pub fn import_ticket_keys(&self, bytes: &[u8]) -> bool {
        self.shared.tls.import_ticket_keys(bytes)
    }

    /// Every listening socket (app ports, the steering listeners and the backhaul listener),
    /// by role and the address each was asked for: what `anyedge run --upgrade` takes over.
    /// Sent by the descriptors the accept loops use: no copies.
    pub fn handover_sockets(&self) -> std::io::Result<Vec<(Role, ListenKey, Vec<HandoverSocket>)>> {
        let set = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = set
            .handover()
            .into_iter()
            .map(|(key, fds)| (Role::App, key, fds))
            .collect();
        drop(set);
        if let Some(steered) = self
            .steered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            for (local, fds) in steered.handover()? {
                out.push((Role::Steering, ListenKey::Addr(local), fds));
            }
        }
        let backhaul = self
            .backhaul_listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = backhaul.as_ref() {
            let fds = sockets::Accepting::handover(&l.accepting);
            out.push((Role::Backhaul, ListenKey::Addr(l.addr), fds));
        }
        Ok(out)
    }

    /// Addresses listened on now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        let set = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut addrs = set.addrs();
        drop(set);
        if let Some(steered) = self
            .steered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            addrs.extend(steered.addrs());
        }
        addrs
    }

    /// Pipes held in the splice pool (two descriptors each), for descriptor accounting.
    pub fn idle_pipes(&self) -> usize {
        self.shared.pipes.idle()
    }

    /// Client connections open now.
    /// This node leaves the catalog (a graceful stop, before its lease is revoked): its load
    /// feeds end, so no edge keeps its instances by the grace rule (`docs/cluster.md`).
    pub fn leave(&self) {
        self.shared.backhaul.leaving.start();
    }

    /// Whether the worker `peer` reports the instance `<app>/<id>` over an open, recent load
    /// feed: the catalog's grace rule for instances lost with their worker's lease.
    pub fn feed_reports(&self, peer: &str, instance: &str) -> bool {
        self.shared
            .backhaul
            .reports
            .reports(peer, instance, std::time::Instant::now())
    }

    pub fn open_connections(&self) -> u32 {
        self.shared.node_connections.in_use()
    }
}
