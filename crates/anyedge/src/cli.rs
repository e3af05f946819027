//! The command line, and `anyedge check`.

use anyedge_telemetry::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// A multi-tenant edge proxy.
#[derive(Parser, Debug)]
#[command(name = "anyedge", version)]
pub struct Cli {
    /// Log format on stderr (filter with ANYEDGE_LOG, e.g. `info,anyedge_edge=debug`).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormatArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node.
    Run(RunArgs),
    /// Replace the running node with this binary in the background (`run --upgrade`), and
    /// exit 0 once it serves, 1 if it fails (the running node goes on); for `ExecReload=`.
    Upgrade(UpgradeArgs),
    /// Validate a config file: print every problem with its place; exit 1 if any.
    Check(CheckArgs),
    /// A self-contained local fleet on loopback, with commands to try.
    Demo(DemoArgs),
    /// Apps kept in etcd (cluster).
    Apps(AppsArgs),
    /// Instances registered in etcd by workers (cluster).
    Instances(InstancesArgs),
    /// Certificates: ACME ones of this node (list), the cluster CA and node certificates.
    Certs(CertsArgs),
    /// What a running node sees (the dashboard's picture): node, catalog, regions, apps,
    /// instances, listeners, certificates, reloads; one table per section, or --json.
    Status(StatusArgs),
    /// Print a shell completion script (e.g. `anyedge completions bash > /etc/bash_completion.d/anyedge`).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff), e.g. `anyedge man > /usr/local/share/man/man1/anyedge.1`.
    Man,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The node's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9180")]
    pub admin: String,
    /// Print the node's JSON (`/v1/status`, or `/v1/apps/APP/status` with --app) as it came.
    #[arg(long)]
    pub json: bool,
    /// One app's own view, with that app's bearer token.
    #[arg(long)]
    pub app: Option<String>,
    /// Bearer token: the operator's (`[admin] tokens_sha256`) or, with --app, the app's.
    /// Default: $ANYEDGE_ADMIN_TOKEN.
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Hostnames with ACME certificates: state (valid until, pending, failing with the last
    /// error) and issuer, read from `[acme] state_dir`, or with --etcd from the cluster
    /// catalog (then also the node holding the issuance lock).
    List(CertsListArgs),
    /// Make a cluster secret key (`[catalog] secret_key_file`): 64 hexadecimal digits, mode
    /// 0600. An existing file is never overwritten.
    SecretKey {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a cluster CA: DIR/cluster-ca.pem and DIR/cluster-ca-key.pem.
    ClusterCa {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a node certificate signed by the CA in --ca: DIR/NODE.pem and DIR/NODE-key.pem.
    Node {
        /// The directory holding cluster-ca.pem and cluster-ca-key.pem.
        #[arg(long)]
        ca: PathBuf,
        /// The node id (its [node] id).
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where etcd is.
#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoint(s), comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub etcd: String,
    /// CA certificate (PEM) that etcd's server certificate must chain to (TLS to etcd).
    #[arg(long)]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present to etcd; needs --etcd-key.
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM); needs --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
}

impl EtcdArgs {
    /// The connection settings, as a node's `[catalog]` would give them.
    pub fn config(&self) -> anyedge_config::EtcdConfig {
        anyedge_config::EtcdConfig {
            endpoints: self.etcd.split(',').map(|e| e.trim().to_string()).collect(),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            secret_key_file: None,
        }
    }
}

#[derive(Args, Debug)]
pub struct AppsArgs {
    #[command(subcommand)]
    pub command: AppsCommand,
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Validate a file of [[apps]] blocks (without instances) and put each app in etcd.
    Put {
        file: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Remove an app from etcd.
    Rm {
        name: String,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// List the apps in etcd.
    List {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

#[derive(Args, Debug)]
pub struct InstancesArgs {
    #[command(subcommand)]
    pub command: InstancesCommand,
}

#[derive(Subcommand, Debug)]
pub enum InstancesCommand {
    /// List the instances workers registered in etcd.
    List {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CertsListArgs {
    /// The node's config (default /etc/anyedge/anyedge.toml without --etcd): its hostnames
    /// are listed even before they have a certificate.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Read the cluster catalog at these etcd endpoint(s) (comma-separated) instead of a
    /// state directory.
    #[arg(long)]
    pub etcd: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// anyedge TOML or the work-sample JSON, recognised by content.
    #[arg(long, default_value = "/etc/anyedge/anyedge.toml")]
    pub config: PathBuf,
    /// Listen for admin requests here instead of the config's `[admin] listen`.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Replace the node running with this config: take every listening socket over from it
    /// through `[node] control_socket`, serve, then tell it to drain (docs/operations.md).
    /// Exits 1, leaving the running node untouched, if the hand-over fails.
    #[arg(long)]
    pub upgrade: bool,
    #[command(flatten)]
    pub steering: SteeringArgs,
}

/// Overrides of `[node] steering` and `bpf_pin_dir`: the work-sample JSON has no `[node]`.
#[derive(Args, Debug, Clone, Default)]
pub struct SteeringArgs {
    /// Use this `[node] steering` ("sockets" or "sk_lookup") whatever the config says
    /// (docs/steering.md).
    #[arg(long, value_enum)]
    pub steering: Option<SteeringArg>,
    /// Use this `[node] bpf_pin_dir` (an absolute path on a BPF filesystem).
    #[arg(long, value_parser = absolute_path)]
    pub bpf_pin_dir: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum SteeringArg {
    Sockets,
    #[value(name = "sk_lookup")]
    SkLookup,
}

fn absolute_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("`{s}` is not an absolute path"))
    }
}

impl SteeringArgs {
    /// Put the overrides into `config` (after every load: at start and on each reload).
    pub fn apply(&self, config: &mut anyedge_config::Config) {
        if let Some(s) = self.steering {
            config.node.steering = match s {
                SteeringArg::Sockets => anyedge_config::Steering::Sockets,
                SteeringArg::SkLookup => anyedge_config::Steering::SkLookup,
            };
        }
        if let Some(dir) = &self.bpf_pin_dir {
            config.node.bpf_pin_dir = dir.clone();
        }
    }

    /// The same overrides as command-line arguments (for `anyedge upgrade`'s new process).
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = self.steering {
            let name = match s {
                SteeringArg::Sockets => "sockets",
                SteeringArg::SkLookup => "sk_lookup",
            };
            out.extend(["--steering".to_string(), name.to_string()]);
        }
        if let Some(dir) = &self.bpf_pin_dir {
            out.extend(["--bpf-pin-dir".to_string(), dir.display().to_string()]);
        }
        out
    }
}

#[derive(Args, Debug, Clone)]
pub struct UpgradeArgs {
    /// The running node's config (the new process reads it).
    #[arg(long, default_value = "/etc/anyedge/anyedge.toml")]
    pub config: PathBuf,
    /// Passed on to the new process as `run --admin-listen`.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub steering: SteeringArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub steering: SteeringArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// First port of the demo's apps and admin listener (all on 127.0.0.1).
    #[arg(long, default_value_t = 14000)]
    pub base_port: u16,
    /// Keep the catalog in this etcd (URL[,URL...]) instead of the nodes' files: the demo puts
    /// its apps there and the workers register their instances.
    #[arg(long)]
    pub etcd: Option<String>,
    /// Requests per second the demo sends itself through the edge, so its dashboard shows
    /// movement (0: none).
    #[arg(long, default_value_t = 5)]
    pub traffic: u32,
    /// `--steering sk_lookup` (root): the edge's ports steered to one listener per family by
    /// an sk_lookup program in this machine's network namespace (docs/steering.md); bpffs is
    /// mounted at /sys/fs/bpf if it is not.
    #[command(flatten)]
    pub steering: SteeringArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl LogFormatArg {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormatArg::Text => "text",
            LogFormatArg::Json => "json",
        }
    }
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// `anyedge check`: diagnostics on stderr, a summary on stdout.
pub fn check(args: &CheckArgs) -> ExitCode {
    match anyedge_config::load(&args.config) {
        Ok(mut config) => {
            args.steering.apply(&mut config);
            if !check_steering(&args.config, &config) {
                return ExitCode::FAILURE;
            }
            let ports: usize = config
                .apps
                .iter()
                .flat_map(|a| &a.services)
                .map(|s| s.ports.len())
                .sum();
            println!(
                "{}: ok ({} apps, {} ports)",
                args.config.display(),
                config.apps.len(),
                ports
            );
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            eprintln!("{} problem(s) found", diagnostics.0.len());
            ExitCode::FAILURE
        }
    }
}

/// With `steering = "sk_lookup"`: whether this machine has what it needs (capabilities, a BPF
/// filesystem under `bpf_pin_dir`, a kernel that loads the program); each lack is printed at
/// the `steering` line with how to fix it.
fn check_steering(path: &std::path::Path, config: &anyedge_config::Config) -> bool {
    if config.node.steering != anyedge_config::Steering::SkLookup || !config.node.roles.edge {
        return true;
    }
    let problems = anyedge_steering::problems(&config.node.bpf_pin_dir);
    let line = std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .position(|l| l.trim_start().starts_with("steering"))
            .map(|i| i + 1)
    });
    let place = match line {
        Some(n) => format!("{}:{n}", path.display()),
        None => format!("{} (--steering)", path.display()),
    };
    for p in &problems {
        eprintln!("{place}: node.steering: steering = \"sk_lookup\" cannot run here: {p}");
    }
    if !problems.is_empty() {
        eprintln!("{} problem(s) found", problems.len());
    }
    problems.is_empty()
}
