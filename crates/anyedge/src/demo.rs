//! `anyedge demo`: a self-contained fleet in one process, on loopback only. Built-in TCP instances
//! (echo, upper-casing echo like the work sample's, and a PROXY-protocol "who am I"), an edge
//! in front of them, and commands to paste.

mod instances;

use crate::cli::DemoArgs;
use crate::node::{build_runtime, Node};
use std::fmt::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
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
        match start(args.base_port).await {
            Ok(node) => {
                wait_for_stop().await;
                node.shutdown(Duration::from_secs(2)).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("demo could not start: {e}");
                ExitCode::FAILURE
            }
        }
    })
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

/// Start the instances and a node in front of them; print what to try.
pub async fn start(base_port: u16) -> Result<Node, Box<dyn std::error::Error>> {
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
    for (region, name) in HELLO {
        hello.push((region, instances::spawn_http("hello", name.into()).await?));
    }
    let ws = [instances::spawn_http("ws", "ws-1".into()).await?];
    let port = |n: u16| base_port.checked_add(n).ok_or("--base-port is too high");
    let (p_echo, p_upper, p_whoami, p_admin) = (port(1)?, port(2)?, port(3)?, port(90)?);
    let p_http = port(80)?;
    let dead = instances::unused_port()?;
    let mut toml = demo_config(
        &echo,
        &upper,
        &whoami,
        [p_echo, p_upper, p_whoami, p_admin],
        dead,
    );
    toml += &http_config(&hello, &ws, p_http);
    let config = anyedge_config::parse(&toml, "<demo>").map_err(|d| d.to_string())?;
    let node = Node::start(config, None).await?;
    println!(
        "{}",
        instructions(p_echo, p_upper, p_whoami, node.admin_addr())
    );
    println!("{}", http_instructions(p_http));
    Ok(node)
}

fn demo_config(
    echo: &[SocketAddr],
    upper: &[SocketAddr],
    whoami: &[SocketAddr],
    ports: [u16; 4],
    dead: u16,
) -> String {
    let [p_echo, p_upper, p_whoami, p_admin] = ports;
    let mut t = String::new();
    let _ = write!(
        t,
        "[node]\nid = \"demo\"\nregion = \"ord\"\n\n[admin]\nlisten = \"127.0.0.1:{p_admin}\"\n\n\
         [regions.ord]\nlat = 41.98\nlon = -87.90\n[regions.iad]\nlat = 38.94\nlon = -77.46\n\
         [regions.syd]\nlat = -33.94\nlon = 151.18\n\n"
    );
    let app = |t: &mut String, name: &str, port: u16, handlers: &str, targets: &[String]| {
        let _ = write!(
            t,
            "[[apps]]\nname = \"{name}\"\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [{handlers}] }} ]\n"
        );
        for (i, target) in targets.iter().enumerate() {
            let _ = write!(
                t,
                "  [[apps.instances]]\n  id = \"{name}-{}\"\n  address = \"{target}\"\n",
                i + 1
            );
        }
        t.push('\n');
    };
    let addrs = |v: &[SocketAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    app(&mut t, "echo", p_echo, "", &addrs(echo));
    // The work sample's shape: two good targets, one that refuses, one that does not resolve.
    let mut upper_targets = addrs(upper);
    upper_targets.push(format!("127.0.0.1:{dead}"));
    upper_targets.push("bad.target.for.testing:6003".into());
    app(&mut t, "upper", p_upper, "", &upper_targets);
    app(
        &mut t,
        "whoami",
        p_whoami,
        "\"proxy_proto\"",
        &addrs(whoami),
    );
    t
}

/// The demo HTTP app's instances: region and name. The node is in ord.
const HELLO: [(&str, &str); 4] = [
    ("ord", "hello-ord-1"),
    ("ord", "hello-ord-2"),
    ("iad", "hello-iad-1"),
    ("syd", "hello-syd-1"),
];

/// The token that shows `anyedge-route` on the demo's HTTP apps.
pub const DEMO_TOKEN: &str = "demo-token";

/// Two HTTP apps sharing one port, told apart by Host. `hello` has instances in three regions
/// and a small per-instance limit, so routing and spill-over are easy to see.
fn http_config(hello: &[(&str, SocketAddr)], ws: &[SocketAddr], port: u16) -> String {
    use sha2::{Digest, Sha256};
    let token: String = Sha256::digest(DEMO_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ws: Vec<(&str, SocketAddr)> = ws.iter().map(|a| ("ord", *a)).collect();
    let mut t = String::new();
    for (name, hosts, extra, instances) in [
        (
            "hello",
            "\"hello.localhost\", \"localhost\", \"127.0.0.1\"",
            "concurrency = { type = \"requests\", soft_limit = 1, hard_limit = 2 }\n\
             limits = { max_inflight = 64, queue = 32, queue_timeout = \"5s\" }\n",
            hello,
        ),
        ("ws", "\"ws.localhost\"", "", &ws[..]),
    ] {
        let _ = write!(
            t,
            "[[apps]]\nname = \"{name}\"\nhostnames = [{hosts}]\ntokens_sha256 = [\"{token}\"]\n{extra}  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
        );
        for (i, (region, a)) in instances.iter().enumerate() {
            let id = if name == "hello" {
                HELLO[i].1.to_string()
            } else {
                format!("{name}-{}", i + 1)
            };
            let _ = write!(
                t,
                "  [[apps.instances]]\n  id = \"{id}\"\n  region = \"{region}\"\n  address = \"{a}\"\n"
            );
        }
        t.push('\n');
    }
    t
}

fn http_instructions(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}");
    let route = format!("-H 'anyedge-debug: route' -H 'anyedge-debug-token: {DEMO_TOKEN}'");
    format!(
        "  # HTTP: \"hello\" has instances in ord (this edge's region, 2), iad and syd; HTTP/1.1 and h2c\n  curl -s {url}/\n  curl -s --http2-prior-knowledge {url}/\n  curl -si -H 'Host: nobody.localhost' {url}/   # 404, anyedge-error: unknown_host\n\
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
        "anyedge demo is running (Ctrl-C to stop). Try:\n\
         \n  # echo: two instances, least-loaded first\n  {}\n\
         \n  # upper: the work sample's shape, 2 good targets + 1 refusing + 1 unresolvable; every connection still succeeds\n  {}\n\
         \n  # whoami: the instance learns your address from a PROXY protocol v1 header\n  {}\n\
         \n  # metrics and health\n  curl -s http://{admin}/metrics | grep '^anyedge_edge'\n  curl -s http://{admin}/healthz\n",
        try_it(p_echo, "hello anyedge"),
        try_it(p_upper, "hello anyedge"),
        try_it(p_whoami, "who am i?"),
    )
}
