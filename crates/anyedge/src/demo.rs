//! `anyedge demo`: a self-contained fleet in one process, on loopback only: an edge and workers
//! in three regions, each a node of its own on its own loopback address, joined by real
//! backhaul; built-in instances (HTTP with WebSocket, a TCP echo, an upper-casing echo like the
//! work sample's, and a PROXY-protocol "who am I") run on the workers; commands to paste.

mod instances;
mod machines;

use crate::cli::DemoArgs;
use crate::node::Node;
use std::fmt::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

pub fn run(args: &DemoArgs) -> ExitCode {
    let runtime = match build_runtime(2) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match start_steered(args.base_port, args.etcd.as_deref(), &args.steering).await {
            Ok(demo) => {
                if args.traffic > 0 {
                    println!("  # built-in traffic: {} requests/s to hello and echo, so the dashboard moves (--traffic 0: none)\n", args.traffic);
                    tokio::spawn(traffic(demo.http_port, demo.echo_port, args.traffic));
                }
                wait_for_stop().await;
                demo.shutdown(Duration::from_secs(2)).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("demo could not start: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The demo's own clients: `per_second` requests a second through the edge, mostly to
/// `hello` (one in twenty slow, to show requests in flight), one in ten a line to `echo`.
async fn traffic(http_port: u16, echo_port: u16, per_second: u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    for n in 0u64.. {
        tick.tick().await;
        let echo = n % 10 == 9;
        let path = if n % 20 == 0 { "/slow/300" } else { "/" };
        tokio::spawn(async move {
            let port = if echo { echo_port } else { http_port };
            let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            let ask = if echo {
                "hello from the demo's traffic\n".to_string()
            } else {
                format!("GET {path} HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close\r\n\r\n")
            };
            if s.write_all(ask.as_bytes()).await.is_ok() {
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            }
        });
    }
}

/// A multi-thread runtime (the demo's: it runs instances and the edge together).
fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
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

async fn wait_for_stop() {
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => std::future::pending().await,
    }
}

/// The demo's nodes: one edge and three workers, each a node of its own (its own config,
/// listeners, metrics and admin port) in this process, on its own loopback address, joined by
/// real backhaul (mutual TLS from a cluster CA made at start).
pub struct Demo {
    pub edge: Arc<Node>,
    pub workers: Vec<Arc<Node>>,
    /// The HTTP port of `hello` and `ws`, and `echo`'s port.
    pub http_port: u16,
    pub echo_port: u16,
    /// Stops each HTTP instance by name (`hello-ord-1`, ...): [`Demo::stop_instance`].
    stops: Vec<(String, tokio::sync::watch::Sender<bool>)>,
    /// With `--etcd`: each node's task following etcd.
    following: tokio::sync::Mutex<Vec<crate::cluster::Following>>,
    pki: std::path::PathBuf,
}

impl Demo {
    /// The edge's metrics.
    pub fn metrics(&self) -> &std::sync::Arc<anyedge_telemetry::Metrics> {
        self.edge.metrics()
    }

    /// Stop the HTTP instance `name` as if its process ended: its listener and connections
    /// close, its checks fail, and the dashboard shows it unhealthy. False if there is none.
    pub fn stop_instance(&self, name: &str) -> bool {
        self.stops
            .iter()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, stop)| stop.send(true).is_ok())
    }

    /// Stop the edge, then the workers; remove the demo's certificates.
    pub async fn shutdown(&self, grace: Duration) {
        for f in self.following.lock().await.drain(..) {
            f.stop().await;
        }
        self.edge.shutdown(grace).await;
        for w in &self.workers {
            w.shutdown(grace).await;
        }
        let _ = std::fs::remove_dir_all(&self.pki);
    }
}

/// The workers: node id, region, loopback address.
const WORKERS: [(&str, &str, &str); 3] = [
    ("ord-1", "ord", "127.0.0.2"),
    ("iad-1", "iad", "127.0.0.3"),
    ("syd-1", "syd", "127.0.0.4"),
];

/// One app of the demo: its `[[apps]]` block without instances, and its instances as
/// (id, worker index, address).
struct DemoApp {
    name: String,
    head: String,
    instances: Vec<(String, usize, String)>,
}

/// Start the instances, three workers that run them and an edge in front; print what to try.
pub async fn start(base_port: u16) -> Result<Demo, Box<dyn std::error::Error>> {
    start_with(base_port, None).await
}

/// Like [`start`]; with `etcd`, the catalog is kept there: the demo puts its apps, the workers
/// register their instances (and where their backhaul is), and the edge follows it.
pub async fn start_with(
    base_port: u16,
    etcd: Option<&str>,
) -> Result<Demo, Box<dyn std::error::Error>> {
    start_steered(base_port, etcd, &crate::cli::SteeringArgs::default()).await
}

/// Like [`start_with`], the edge's `[node] steering` and `bpf_pin_dir` overridden by
/// `steering`; with `sk_lookup`, a BPF filesystem is mounted at `/sys/fs/bpf` if none is
/// there (the demo runs as root for it; a node never mounts one itself).
pub async fn start_steered(
    base_port: u16,
    etcd: Option<&str>,
    steering: &crate::cli::SteeringArgs,
) -> Result<Demo, Box<dyn std::error::Error>> {
    if matches!(steering.steering, Some(crate::cli::SteeringArg::SkLookup)) {
        anyedge_steering::netns::mount_bpffs()
            .map_err(|e| format!("--steering sk_lookup: cannot mount bpffs at /sys/fs/bpf: {e} (run the demo as root)"))?;
    }
    let started = Started::spawn().await?;
    let port = |n: u16| base_port.checked_add(n).ok_or("--base-port is too high");
    let (p_echo, p_upper, p_whoami, p_admin) = (port(1)?, port(2)?, port(3)?, port(90)?);
    let (p_http, p_backhaul) = (port(80)?, port(50)?);
    let dead = instances::unused_port()?;
    let (echo, upper, whoami) = (&started.echo, &started.upper, &started.whoami);
    let mut apps = tcp_apps(echo, upper, whoami, [p_echo, p_upper, p_whoami], dead);
    apps.extend(http_apps(&started.hello, started.ws, p_http));
    let pki = write_pki()?;
    let ports = NodePorts {
        admin: p_admin,
        backhaul: p_backhaul,
    };
    let mut workers = Vec::new();
    let mut following = Vec::new();
    for (w, (id, _, _)) in WORKERS.iter().enumerate() {
        let toml = worker_toml(w, &apps, &pki, etcd, ports);
        let config =
            anyedge_config::parse(&toml, &format!("<demo {id}>")).map_err(|d| d.to_string())?;
        let (node, follow) = crate::cluster::start_following(config).await?;
        workers.push(node);
        following.extend(follow);
    }
    if let Some(url) = etcd {
        let text: String = apps.iter().map(|a| a.head.as_str()).collect();
        crate::manage::put_apps_text(url, &text).await?;
    }
    let mut toml = edge_toml(&apps, &pki, etcd, ports);
    // The app that scales to zero runs beside the edge (its driver is the edge's): file
    // catalog only.
    if etcd.is_none() {
        toml += &sleepy_app(&machines::spawn().await?, p_http);
    }
    let mut config = anyedge_config::parse(&toml, "<demo edge>").map_err(|d| d.to_string())?;
    steering.apply(&mut config);
    let (edge, follow) = crate::cluster::start_following(config).await?;
    following.extend(follow);
    println!(
        "{}",
        instructions(p_echo, p_upper, p_whoami, edge.admin_addr())
    );
    println!("{}", http_instructions(p_http));
    if etcd.is_none() {
        println!("{}", sleepy_instructions(p_http, edge.admin_addr()));
    }
    Ok(Demo {
        edge,
        workers,
        http_port: p_http,
        echo_port: p_echo,
        stops: started.stops,
        following: tokio::sync::Mutex::new(following),
        pki,
    })
}

/// The demo's built-in instances, started on 127.0.0.1 ephemeral ports.
struct Started {
    echo: [SocketAddr; 2],
    upper: [SocketAddr; 2],
    whoami: [SocketAddr; 2],
    /// With the worker each runs on (index into [`WORKERS`]), as [`HELLO`] says.
    hello: Vec<(usize, SocketAddr)>,
    ws: SocketAddr,
    stops: Vec<(String, tokio::sync::watch::Sender<bool>)>,
}

impl Started {
    async fn spawn() -> std::io::Result<Started> {
        let echo = [
            instances::spawn(instances::Kind::Echo).await?,
            instances::spawn(instances::Kind::Echo).await?,
        ];
        let upper = [
            instances::spawn(instances::Kind::Upper).await?,
            instances::spawn(instances::Kind::Upper).await?,
        ];
        let whoami = [
            instances::spawn(instances::Kind::WhoAmI("whoami-1")).await?,
            instances::spawn(instances::Kind::WhoAmI("whoami-2")).await?,
        ];
        let mut hello = Vec::new();
        let mut stops = Vec::new();
        for (worker, name) in HELLO {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            hello.push((
                worker,
                instances::spawn_http("hello", name.into(), stopped).await?,
            ));
            stops.push((name.to_string(), stop));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let ws = instances::spawn_http("ws", "ws-1".into(), stopped).await?;
        stops.push(("ws-1".to_string(), stop));
        Ok(Started {
            echo,
            upper,
            whoami,
            hello,
            ws,
            stops,
        })
    }
}

/// The ports every node of the demo uses, each on its own loopback address.
#[derive(Clone, Copy)]
struct NodePorts {
    admin: u16,
    backhaul: u16,
}

/// The config of worker `w` (index into [`WORKERS`]). With the file catalog it holds the apps
/// that have instances on it, with those instances; with `etcd` only its instances, as
/// `[[instances]]` it registers.
fn worker_toml(
    w: usize,
    apps: &[DemoApp],
    pki: &std::path::Path,
    etcd: Option<&str>,
    ports: NodePorts,
) -> String {
    let (id, region, ip) = WORKERS[w];
    let (p_admin, p_backhaul) = (ports.admin, ports.backhaul);
    let mut toml = format!(
        "[node]\nid = \"{id}\"\nregion = \"{region}\"\nroles = [\"worker\"]\nbackhaul_listen = \"{ip}:{p_backhaul}\"\nadvertise = \"{ip}:{p_backhaul}\"\ndrain_timeout = \"2s\"\n\n[admin]\nlisten = \"{ip}:{p_admin}\"\n\n{}{}{REGIONS}",
        cluster_section(pki, id),
        catalog_section(etcd),
    );
    for app in apps {
        let mine: Vec<_> = app.instances.iter().filter(|i| i.1 == w).collect();
        if mine.is_empty() {
            continue;
        }
        if etcd.is_none() {
            toml += &app.head;
        }
        for (iid, _, addr) in mine {
            let _ = match etcd {
                Some(_) => write!(
                    toml,
                    "[[instances]]\napp = \"{}\"\nid = \"{iid}\"\naddress = \"{addr}\"\n",
                    app.name
                ),
                None => write!(
                    toml,
                    "  [[apps.instances]]\n  id = \"{iid}\"\n  address = \"{addr}\"\n"
                ),
            };
        }
        toml.push('\n');
    }
    toml
}

/// The edge's config. With the file catalog it names the workers (`[[nodes]]`) and holds
/// every app with its instances on them; with `etcd` it has its own sections alone.
fn edge_toml(
    apps: &[DemoApp],
    pki: &std::path::Path,
    etcd: Option<&str>,
    ports: NodePorts,
) -> String {
    let (p_admin, p_backhaul) = (ports.admin, ports.backhaul);
    let mut toml = format!(
        "[node]\nid = \"edge-ord\"\nregion = \"ord\"\nroles = [\"edge\"]\ndrain_timeout = \"2s\"\n\n[admin]\nlisten = \"127.0.0.1:{p_admin}\"\n\n{}{}{REGIONS}",
        cluster_section(pki, "edge-ord"),
        catalog_section(etcd),
    );
    let file_catalog = if etcd.is_some() { &[][..] } else { apps };
    for (id, region, ip) in WORKERS.iter().filter(|_| etcd.is_none()) {
        let _ = write!(
            toml,
            "[[nodes]]\nid = \"{id}\"\nregion = \"{region}\"\nadvertise = \"{ip}:{p_backhaul}\"\n"
        );
    }
    for app in file_catalog {
        toml += &app.head;
        for (iid, w, addr) in &app.instances {
            let (node, region, _) = WORKERS[*w];
            let _ = write!(
                toml,
                "  [[apps.instances]]\n  id = \"{iid}\"\n  region = \"{region}\"\n  address = \"{addr}\"\n  node = \"{node}\"\n"
            );
        }
        toml.push('\n');
    }
    toml
}

const REGIONS: &str = "[regions.ord]\nlat = 41.98\nlon = -87.90\n[regions.iad]\nlat = 38.94\nlon = -77.46\n[regions.syd]\nlat = -33.94\nlon = 151.18\n\n";

/// The cluster CA and a certificate for each node, in a directory of this process.
fn write_pki() -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    use anyedge_tls::cluster_ca;
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("anyedge-demo-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = cluster_ca::new_ca()?;
    std::fs::write(dir.join("cluster-ca.pem"), &ca.cert)?;
    for id in WORKERS.iter().map(|w| w.0).chain(["edge-ord"]) {
        let node = cluster_ca::issue_node(&ca, id)?;
        std::fs::write(dir.join(format!("{id}.pem")), &node.cert)?;
        let key = dir.join(format!("{id}-key.pem"));
        std::fs::write(&key, &node.key)?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    Ok(dir)
}

fn catalog_section(etcd: Option<&str>) -> String {
    match etcd {
        None => String::new(),
        Some(url) => {
            let endpoints: Vec<String> = url
                .split(',')
                .map(|u| format!("\"{}\"", u.trim()))
                .collect();
            format!(
                "[catalog]\nstore = \"etcd\"\netcd_endpoints = [{}]\n\n",
                endpoints.join(", ")
            )
        }
    }
}

fn cluster_section(dir: &std::path::Path, id: &str) -> String {
    format!(
        "[cluster]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
        dir.join("cluster-ca.pem").display(),
        dir.join(format!("{id}.pem")).display(),
        dir.join(format!("{id}-key.pem")).display()
    )
}

/// The raw TCP apps. Their instances are spread over the ord and iad workers.
fn tcp_apps(
    echo: &[SocketAddr],
    upper: &[SocketAddr],
    whoami: &[SocketAddr],
    ports: [u16; 3],
    dead: u16,
) -> Vec<DemoApp> {
    let [p_echo, p_upper, p_whoami] = ports;
    let app = |name: &str, port: u16, handlers: &str, targets: Vec<String>| {
        DemoApp {
        name: name.to_string(),
        head: format!(
            "[[apps]]\nname = \"{name}\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [{handlers}] }} ]\n"
        ),
        instances: targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("{name}-{}", i + 1), i % 2, t))
            .collect(),
    }
    };
    let addrs = |v: &[SocketAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    // The work sample's shape: two good targets, one that refuses, one that does not resolve.
    let mut upper_targets = addrs(upper);
    upper_targets.push(format!("127.0.0.1:{dead}"));
    upper_targets.push("bad.target.for.testing:6003".into());
    vec![
        app("echo", p_echo, "", addrs(echo)),
        app("upper", p_upper, "", upper_targets),
        app("whoami", p_whoami, "\"proxy_proto\"", addrs(whoami)),
    ]
}

/// The demo HTTP app's instances: the worker (index into [`WORKERS`]) and name. The edge is
/// in ord.
const HELLO: [(usize, &str); 4] = [
    (0, "hello-ord-1"),
    (0, "hello-ord-2"),
    (1, "hello-iad-1"),
    (2, "hello-syd-1"),
];

/// The token that shows `anyedge-route` on the demo's HTTP apps.
pub const DEMO_TOKEN: &str = "demo-token";

/// Two HTTP apps sharing one port, told apart by Host. `hello` has instances in three regions
/// and a small per-instance limit, so routing and spill-over are easy to see.
fn http_apps(hello: &[(usize, SocketAddr)], ws: SocketAddr, port: u16) -> Vec<DemoApp> {
    use sha2::{Digest, Sha256};
    let token: String = Sha256::digest(DEMO_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // An active check, so an instance that stops turns unhealthy on the dashboard within
    // about two seconds, with or without traffic.
    let head = |name: &str, hosts: &str, extra: &str| {
        format!(
            "[[apps]]\nname = \"{name}\"\nhostnames = [{hosts}]\ntokens_sha256 = [\"{token}\"]\n{extra}  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  checks = [ {{ type = \"http\", path = \"/healthz\", interval = \"1s\", timeout = \"500ms\", unhealthy_threshold = 2, healthy_threshold = 1 }} ]\n"
        )
    };
    vec![
        DemoApp {
            name: "hello".into(),
            head: head(
                "hello",
                "\"hello.localhost\", \"localhost\", \"127.0.0.1\"",
                "concurrency = { type = \"requests\", soft_limit = 1, hard_limit = 2 }\n\
                 limits = { max_inflight = 64, queue = 32, queue_timeout = \"5s\" }\n",
            ),
            instances: hello
                .iter()
                .zip(HELLO)
                .map(|((w, a), (_, name))| (name.to_string(), *w, a.to_string()))
                .collect(),
        },
        DemoApp {
            name: "ws".into(),
            head: head("ws", "\"ws.localhost\"", ""),
            instances: vec![("ws-1".into(), 0, ws.to_string())],
        },
    ]
}

/// `sleepy`: one instance started on demand through the demo's machines API (the `http`
/// driver), stopped after 20 s idle.
fn sleepy_app(m: &machines::Machines, port: u16) -> String {
    format!(
        "[[apps]]\nname = \"sleepy\"\nhostnames = [\"sleepy.localhost\"]\nauto_start = true\nauto_stop = \"stop\"\nmin_running = 0\nstop_after = \"20s\"\nstart_timeout = \"10s\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"sleepy-1\"\n  address = \"{}\"\n  driver = {{ type = \"http\", url = \"http://{}/v1/machines/sleepy-1\" }}\n\n",
        m.instance, m.api
    )
}

fn sleepy_instructions(port: u16, admin: SocketAddr) -> String {
    let url = format!("http://127.0.0.1:{port}");
    format!(
        "  # scale to zero: \"sleepy\" is stopped; the first request starts it (its machine boots in 1 s) and waits, then it is served; 20 s idle and it stops again\n  curl -s -w '%{{time_total}}s\\n' -H 'Host: sleepy.localhost' {url}/\n  curl -s -w '%{{time_total}}s\\n' -H 'Host: sleepy.localhost' {url}/\n  curl -s http://{admin}/metrics | grep -e '^anyedge_instance_st' -e '^anyedge_requests_waited'\n"
    )
}

fn http_instructions(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}");
    let route = format!("-H 'anyedge-debug: route' -H 'anyedge-debug-token: {DEMO_TOKEN}'");
    format!(
        "  # HTTP: \"hello\" has instances on the workers in ord (the edge's region, 2), iad and syd, reached over backhaul; HTTP/1.1 and h2c\n  curl -s {url}/\n  curl -s --http2-prior-knowledge {url}/\n  curl -si -H 'Host: nobody.localhost' {url}/   # 404, anyedge-error: unknown_host\n\
         \n  # why that instance? the route trace (nearest region first, least loaded inside it)\n  curl -si {route} {url}/ | grep -i '^anyedge-route'\n\
         \n  # spill-over: each instance takes 2 requests at most; hold ord's 4 slots, then ask again (goes to iad)\n  for i in 1 2 3 4; do curl -s {url}/slow/5000 >/dev/null & done; sleep 0.5; curl -si {route} {url}/ | grep -i -e '^anyedge-route' -e '^hello'\n\
         \n  # ask for a region or an instance\n  curl -s -H 'anyedge-force-region: syd' {url}/\n  curl -si -H 'anyedge-prefer-instance-id: hello-iad-1' {url}/\n\
         \n  # replay: writes go to the primary in syd (the instance answers anyedge-replay: region=syd)\n  curl -s -X POST -d 'x=1' {url}/write\n\
         \n  # WebSocket echo, Host ws.localhost: ws://ws.localhost:{port}/ws (e.g. websocat ws://127.0.0.1:{port}/ws -H 'Host: ws.localhost')\n"
    )
}

fn instructions(p_echo: u16, p_upper: u16, p_whoami: u16, admin: SocketAddr) -> String {
    let try_it = |port: u16, line: &str| {
        format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; echo \"{line}\" >&3; head -n1 <&3'")
    };
    format!(
        "dashboard: http://{admin}/   (an app owner's view: http://{admin}/apps/hello, token {DEMO_TOKEN})\n\n\
         anyedge demo is running (Ctrl-C to stop): an edge on 127.0.0.1 and workers ord-1, iad-1, syd-1 on 127.0.0.2-4, joined by backhaul (mutual TLS). Try:\n\
         \n  # echo: two instances, least-loaded first\n  {}\n\
         \n  # upper: the work sample's shape, 2 good targets + 1 refusing + 1 unresolvable; every connection still succeeds\n  {}\n\
         \n  # whoami: the instance learns your address from a PROXY protocol v1 header\n  {}\n\
         \n  # metrics and health (the workers' admin ports: the same port on 127.0.0.2-4)\n  curl -s http://{admin}/metrics | grep -e '^anyedge_edge' -e '^anyedge_backhaul'\n  curl -s http://{admin}/healthz\n",
        try_it(p_echo, "hello anyedge"),
        try_it(p_upper, "hello anyedge"),
        try_it(p_whoami, "who am i?"),
    )
}
