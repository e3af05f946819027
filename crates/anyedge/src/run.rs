//! `anyedge run`: load and validate the config without binding anything, take the listening
//! sockets over from the running node with `--upgrade`, build the runtimes, start the node (on
//! the etcd store, following etcd and registering first), answer on the control socket,
//! reload on SIGHUP, a file change or a catalog change, drain on SIGTERM/SIGINT or once a new
//! process has taken over.

use crate::cli::{RunArgs, UpgradeArgs};
use crate::cluster::{self, EtcdFeed};
use crate::control;
use crate::node::{apply, Node, Takeover};
use anyedge_config::Config;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// `anyedge run`: exit 1 on a bad config, a port that cannot be opened, or a failed upgrade.
pub fn run(args: &RunArgs) -> ExitCode {
    let config = match anyedge_config::load(&args.config) {
        Ok(mut c) => {
            args.steering.apply(&mut c);
            c
        }
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            return ExitCode::FAILURE;
        }
    };
    let upgrade = match (&config.node.control_socket, args.upgrade) {
        (None, true) => {
            eprintln!("anyedge: --upgrade needs [node] control_socket in {}: the running node hands its sockets over there", args.config.display());
            return ExitCode::FAILURE;
        }
        (Some(path), true) => match control::take_over(path) {
            Ok(upgrade) => Some(upgrade),
            Err(e) => {
                eprintln!("anyedge: upgrade failed: {e}; the running node was not touched");
                return ExitCode::FAILURE;
            }
        },
        (Some(path), false) if control::in_use(path) => {
            eprintln!("anyedge: a node is running with the control socket {}: to replace it, use `anyedge run --upgrade`", path.display());
            return ExitCode::FAILURE;
        }
        (_, false) => None,
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
    control.block_on(serve(config, args, shards.handles(), upgrade))
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

/// How the main loop ended.
enum End {
    Signal,
    /// A new process serves on this one's sockets.
    HandedOver,
}

async fn serve(
    config: Config,
    args: &RunArgs,
    shards: Vec<tokio::runtime::Handle>,
    upgrade: Option<control::Upgrade>,
) -> ExitCode {
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
    let from = upgrade
        .as_ref()
        .map_or_else(Takeover::default, |u| Takeover {
            sockets: u.sockets.clone(),
            generation: u.generation,
            tickets: u.tickets.clone(),
        });
    let (node, mut feed) = match cluster::start_node(&base, args.admin_listen, shards, from).await {
        Ok(started) => started,
        Err(e) => {
            // With --upgrade the old node was not told to drain: it goes on serving.
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let node = Arc::new(node);
    let (handed_over, mut drain_asked) = tokio::sync::mpsc::unbounded_channel();
    let control = match (&base.node.control_socket, upgrade) {
        (Some(path), Some(upgrade)) => {
            // Waits for the old node's answer: off this runtime, which serves admin requests.
            let (path, node) = (path.clone(), node.clone());
            tokio::task::spawn_blocking(move || upgrade.finish(&path, node, handed_over))
                .await
                .ok()
                .flatten()
        }
        (Some(path), None) => control::ControlServer::start(path, node.clone(), handed_over)
            .inspect_err(|e| tracing::error!(path = %path.display(), error = %e, "cannot listen on the control socket; upgrades by hand-over are off"))
            .ok(),
        (None, _) => None,
    };
    control::systemd::ready();
    let mut changes = crate::watch::FileWatch::new(&args.config);
    let reports = |peer: &str, instance: &str| node.feed_reports(peer, instance);
    let end = loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                reload_from(&node, args, &mut base, feed.as_mut()).await;
            }
            _ = changes.changed() => reload_from(&node, args, &mut base, feed.as_mut()).await,
            _ = cluster::changed(&mut feed, &reports) => {
                if let Some(f) = feed.as_mut() {
                    let (source, node, base) = (f.source(&reports), node.clone(), base.clone());
                    off_runtime(move || {
                        let reports = |peer: &str, instance: &str| node.feed_reports(peer, instance);
                        apply(&node, source.config_graced(&base, &reports))
                    })
                    .await;
                }
            }
            Some(()) = drain_asked.recv() => break End::HandedOver,
            _ = term.recv() => break End::Signal,
            _ = int.recv() => break End::Signal,
        }
    };
    if let Some(c) = control {
        c.close();
    }
    match (end, feed) {
        // Leave the catalog first, so other nodes stop sending here while this one drains.
        // Its load feeds end before its lease goes, so edges do not keep its instances by the
        // grace rule for instances lost with a lease.
        (End::Signal, Some(f)) => {
            node.leave();
            f.stop().await
        }
        // The new process registered the same keys under its own lease: revoking this one's
        // would delete them. It lapses instead.
        (End::HandedOver, f) => {
            node.handed_over();
            drop(f);
        }
        (End::Signal, None) => {}
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
    // The access log's buffered lines, before the process ends.
    anyedge_telemetry::access::flush();
    ExitCode::SUCCESS
}

/// Run reload work (reading and validating a file, assembling the catalog's config, building
/// the next snapshot and routes) on the blocking pool, not on the control runtime: that runtime
/// also answers `/healthz` and `/metrics` and runs the health checks, which a reload of a large
/// catalog would otherwise stall for as long as it takes. The main loop waits for it, so reloads
/// still run one at a time and in order.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Read the node's file again. With the etcd store the file holds the node's own sections and
/// instances: they are registered anew and joined with the catalog's apps.
async fn reload_from(
    node: &Arc<Node>,
    args: &RunArgs,
    base: &mut Arc<Config>,
    feed: Option<&mut EtcdFeed>,
) {
    let file = args.config.clone();
    let config = match off_runtime(move || anyedge_config::load(&file)).await {
        Ok(mut config) => {
            args.steering.apply(&mut config);
            config
        }
        Err(diagnostics) => return node.reload_failed(diagnostics.to_string()),
    };
    if config.catalog != base.catalog {
        return node.reload_failed(
            "[catalog] changes only on restart; the file was not reloaded\n".to_string(),
        );
    }
    *base = Arc::new(config);
    let (node, base) = (node.clone(), base.clone());
    match feed {
        Some(f) => {
            f.update(base.clone());
            let source = f.source(&|p, i| node.feed_reports(p, i));
            off_runtime(move || {
                let reports = |peer: &str, instance: &str| node.feed_reports(peer, instance);
                apply(&node, source.config_graced(&base, &reports))
            })
            .await;
        }
        None => off_runtime(move || apply(&node, (*base).clone())).await,
    }
}

/// How long `anyedge upgrade` waits for the new process to serve.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `anyedge upgrade`: start `anyedge run --upgrade` (this binary) in the background, in a
/// process group of its own, and wait until it answers on the control socket: exit 0 then, 1
/// if it exits first (its log says why; the running node goes on) or does not answer in time.
/// For systemd's `ExecReload=`, which must end (`docs/operations.md`).
pub fn upgrade(args: &UpgradeArgs, log_format: &str) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let config = match anyedge_config::load(&args.config) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            return ExitCode::FAILURE;
        }
    };
    let Some(path) = config.node.control_socket.clone() else {
        eprintln!(
            "anyedge: upgrade needs [node] control_socket in {}",
            args.config.display()
        );
        return ExitCode::FAILURE;
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("anyedge: cannot find this binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut command = std::process::Command::new(exe);
    command.args(["--log-format", log_format, "run", "--upgrade", "--config"]);
    command.arg(&args.config);
    if let Some(admin) = args.admin_listen {
        command.args(["--admin-listen", &admin.to_string()]);
    }
    command.args(args.steering.to_args());
    command.stdin(std::process::Stdio::null()).process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("anyedge: cannot start the new process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = std::time::Instant::now() + UPGRADE_WAIT;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("anyedge: the new process exited ({status}); the running node goes on");
            return ExitCode::FAILURE;
        }
        if control::status(&path).is_some_and(|(pid, _)| pid == child.id()) {
            println!("upgraded: pid {} serves", child.id());
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "anyedge: the new process (pid {}) did not answer on {} within {UPGRADE_WAIT:?}",
        child.id(),
        path.display()
    );
    ExitCode::FAILURE
}
