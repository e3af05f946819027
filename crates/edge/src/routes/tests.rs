//! The routing table of a snapshot: hosts (exact before wildcard, one label of wildcard), ports
//! bound to one address against the wildcard, the listeners wanted, raw TCP against HTTP, and
//! the instance pools carried across snapshots by (instance, address, port).

use super::*;
use crate::Edge;
use anyedge_catalog::LiveRegistry;
use anyedge_core::Drain;
use std::sync::Weak;

/// `exact` and `wild` share HTTP port 10080, `wild` also serves TLS on 10443; raw TCP port
/// 9000 is `tcp-bound`'s on 127.0.0.2 and `tcp-any`'s everywhere else (with a PROXY header);
/// HTTP port 10081 is only on 127.0.0.3; `two` has two HTTP services on ports 10082 and 10083,
/// its instances listening on 80 and 81. `EXACT_AT` is where `exact`'s instance is.
const NODE: &str = r#"
[node]
id = "e"
[[apps]]
name = "exact"
hostnames = ["api.example.com"]
[[apps.services]]
internal_port = 80
ports = [ { port = 10080, handlers = ["http"] } ]
[[apps.instances]]
id = "i"
address = "EXACT_AT"
[[apps]]
name = "wild"
hostnames = ["*.example.com"]
[[apps.services]]
internal_port = 80
ports = [ { port = 10080, handlers = ["http"] }, { port = 10443, handlers = ["tls", "http"] } ]
[[apps.instances]]
id = "i"
address = "127.0.0.1:7002"
[[apps]]
name = "tcp-bound"
[[apps.services]]
internal_port = 80
ports = [ { port = 9000, bind = "127.0.0.2" } ]
[[apps.instances]]
id = "i"
address = "127.0.0.1"
[[apps]]
name = "tcp-any"
[[apps.services]]
internal_port = 80
ports = [ { port = 9000, handlers = ["proxy_proto"], proxy_proto = "v2" } ]
[[apps.instances]]
id = "i"
address = "127.0.0.1"
[[apps]]
name = "bound"
hostnames = ["bound.test"]
[[apps.services]]
internal_port = 80
ports = [ { port = 10081, bind = "127.0.0.3", handlers = ["http"] } ]
[[apps.instances]]
id = "i"
address = "127.0.0.1"
[[apps]]
name = "two"
hostnames = ["two.test"]
[[apps.services]]
internal_port = 80
ports = [ { port = 10082, handlers = ["http"] } ]
[[apps.services]]
internal_port = 81
ports = [ { port = 10083, handlers = ["http"] } ]
[[apps.instances]]
id = "i"
address = "127.0.0.1"
"#;

/// A node's shared state and the snapshots it is given, each built on the one before, and
/// each one's routes built on the routes before, as `Edge::apply` does.
struct Node {
    edge: Edge,
    registry: Arc<LiveRegistry>,
    current: Option<Arc<Snapshot>>,
    routes: Option<Arc<Routes>>,
}

impl Node {
    /// In a runtime: the node's only shard is the current one.
    fn new() -> Node {
        let limits = anyedge_config::Limits::default();
        let edge = Edge::new(Metrics::new(), Drain::new(), &limits, Vec::new()).expect("node");
        Node {
            edge,
            registry: LiveRegistry::new(),
            current: None,
            routes: None,
        }
    }

    /// The routes of `toml` (no listener is opened).
    fn routes(&mut self, toml: &str) -> Arc<Routes> {
        let config = anyedge_config::parse(toml, "t.toml").unwrap_or_else(|d| panic!("{d}"));
        let snapshot = Arc::new(Snapshot::build(
            Arc::new(config),
            &self.registry,
            self.current.as_deref(),
        ));
        self.current = Some(snapshot.clone());
        let shared = &self.edge.shared;
        let tls = self.edge.tls_server(&snapshot);
        let routes = Arc::new(Routes::build(
            &snapshot,
            self.routes.as_deref(),
            &shared.metrics,
            &shared.pools,
            &shared.backhaul,
            tls,
        ));
        self.routes = Some(routes.clone());
        routes
    }
}

fn node_file(exact_at: &str) -> String {
    NODE.replace("EXACT_AT", exact_at)
}

fn at(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn http_port(routes: &Routes, local: SocketAddr) -> &HttpPort {
    match routes.port(local) {
        Some(PortRoute::Http(p)) => p,
        Some(PortRoute::Tcp(t)) => panic!("{local}: raw TCP for {}", t.app.name),
        None => panic!("{local}: no route"),
    }
}

fn tcp_app(routes: &Routes, local: SocketAddr) -> Option<(&str, Option<ProxyProtoVersion>)> {
    match routes.port(local)? {
        PortRoute::Tcp(t) => Some((&t.app.name, t.proxy_proto)),
        PortRoute::Http(_) => panic!("{local}: HTTP"),
    }
}

/// The app a host reaches on the HTTP port at `local`.
fn app_for<'a>(routes: &'a Routes, local: SocketAddr, host: &str) -> Option<&'a str> {
    http_port(routes, local).app(host).map(|a| &*a.app.name)
}

#[tokio::test]
async fn an_exact_host_wins_over_the_wildcard_which_covers_one_label() {
    let routes = Node::new().routes(&node_file("127.0.0.1:7001"));
    let port = at([127, 0, 0, 1], 10080);
    assert_eq!(app_for(&routes, port, "api.example.com"), Some("exact"));
    assert_eq!(app_for(&routes, port, "www.example.com"), Some("wild"));
    assert_eq!(app_for(&routes, port, "a.b.example.com"), None, "one label");
    assert_eq!(
        app_for(&routes, port, "example.com"),
        None,
        "not the parent"
    );
    assert_eq!(app_for(&routes, port, "two.test"), None, "not on this port");
    assert!(!http_port(&routes, port).tls);
    let tls = at([127, 0, 0, 1], 10443);
    assert!(http_port(&routes, tls).tls);
    assert_eq!(app_for(&routes, tls, "api.example.com"), Some("wild"));
    assert_eq!(
        routes.http_app("wild").map(|a| &*a.app.name),
        Some("wild"),
        "by name too"
    );
    assert!(routes.http_app("tcp-any").is_none(), "no HTTP service");
}

#[tokio::test]
async fn a_port_bound_to_one_address_is_routed_there_and_the_wildcard_elsewhere() {
    let routes = Node::new().routes(&node_file("127.0.0.1:7001"));
    assert_eq!(
        tcp_app(&routes, at([127, 0, 0, 2], 9000)),
        Some(("tcp-bound", None))
    );
    let mapped: SocketAddr = "[::ffff:127.0.0.2]:9000".parse().expect("address");
    assert_eq!(
        tcp_app(&routes, mapped),
        Some(("tcp-bound", None)),
        "an IPv4-mapped address is the IPv4 one"
    );
    let v2 = Some(ProxyProtoVersion::V2);
    assert_eq!(
        tcp_app(&routes, at([127, 0, 0, 1], 9000)),
        Some(("tcp-any", v2))
    );
    assert_eq!(
        tcp_app(&routes, at([10, 1, 2, 3], 9000)),
        Some(("tcp-any", v2))
    );
    assert_eq!(
        app_for(&routes, at([127, 0, 0, 3], 10081), "bound.test"),
        Some("bound")
    );
    assert!(
        routes.port(at([127, 0, 0, 1], 10081)).is_none(),
        "bound to 127.0.0.3 only"
    );
    assert!(routes.port(at([127, 0, 0, 1], 1)).is_none());
}

#[tokio::test]
async fn a_port_with_a_wildcard_user_gets_one_wildcard_listener() {
    let mut node = Node::new();
    let routes = node.routes(&node_file("127.0.0.1:7001"));
    let want: BTreeSet<ListenAddr> = [
        ListenAddr::Any(9000),
        ListenAddr::Any(10080),
        ListenAddr::Any(10443),
        ListenAddr::One(at([127, 0, 0, 3], 10081)),
        ListenAddr::Any(10082),
        ListenAddr::Any(10083),
    ]
    .into();
    assert_eq!(routes.listen_addrs(), want);
    let worker =
        node_file("127.0.0.1:7001").replace("id = \"e\"", "id = \"e\"\nroles = [\"worker\"]");
    let routes = node.routes(&worker);
    assert!(routes.listen_addrs().is_empty(), "no app ports on a worker");
    assert!(
        routes.port(at([127, 0, 0, 1], 10080)).is_some(),
        "routes all the same"
    );
    assert!(Routes::default().listen_addrs().is_empty());
}

/// The pool of the first instance of `app` as the HTTP port at `local` reaches it for `host`.
fn pool(routes: &Routes, local: u16, host: &str) -> Arc<UpstreamPool> {
    let app = http_port(routes, at([127, 0, 0, 1], local))
        .app(host)
        .expect("routed");
    app.pools[0].clone()
}

#[tokio::test]
async fn pools_follow_an_instances_address_and_go_when_no_route_uses_them() {
    let mut node = Node::new();
    let first = node.routes(&node_file("127.0.0.1:7001"));
    let (exact, wild) = (
        pool(&first, 10080, "api.example.com"),
        pool(&first, 10080, "www.example.com"),
    );
    assert!(!Arc::ptr_eq(&exact, &wild));
    assert!(
        Arc::ptr_eq(&wild, &pool(&first, 10443, "www.example.com")),
        "one pool per instance and service, whatever the port"
    );
    let (svc80, svc81) = (
        pool(&first, 10082, "two.test"),
        pool(&first, 10083, "two.test"),
    );
    assert!(
        !Arc::ptr_eq(&svc80, &svc81),
        "two services of one app reach its instance on two ports"
    );

    let same = node.routes(&node_file("127.0.0.1:7001"));
    assert!(Arc::ptr_eq(&exact, &pool(&same, 10080, "api.example.com")));
    let other_host = node.routes(&node_file("127.0.0.2:7001"));
    let other_host_pool = pool(&other_host, 10080, "api.example.com");
    assert!(
        !Arc::ptr_eq(&exact, &other_host_pool),
        "another host under the same id is a new pool"
    );
    assert!(Arc::ptr_eq(
        &wild,
        &pool(&other_host, 10080, "www.example.com")
    ));
    let moved = node.routes(&node_file("127.0.0.2:7003"));
    let moved_pool = pool(&moved, 10080, "api.example.com");
    assert!(
        !Arc::ptr_eq(&other_host_pool, &moved_pool),
        "another port is a new pool too"
    );
    drop((other_host_pool, other_host));

    // The pool of the old address is gone from the node once routes are built without it.
    let old: Weak<UpstreamPool> = Arc::downgrade(&exact);
    drop((exact, first, same));
    assert!(old.upgrade().is_none(), "no route and no table keep it");
    // Dropping the app drops its pools at the next build.
    let current = Arc::downgrade(&moved_pool);
    drop((moved_pool, moved));
    assert!(current.upgrade().is_some(), "still the node's pool");
    let without = NODE
        .split("[[apps]]\nname = \"wild\"")
        .nth(1)
        .expect("apps");
    let last = node.routes(&format!(
        "[node]\nid = \"e\"\n[[apps]]\nname = \"wild\"{without}"
    ));
    assert!(current.upgrade().is_none(), "no route uses it");
    assert!(Arc::ptr_eq(&wild, &pool(&last, 10080, "www.example.com")));
}

#[tokio::test]
async fn a_reload_builds_the_http_services_of_changed_apps_and_reuses_the_others() {
    let mut node = Node::new();
    let first = node.routes(&node_file("127.0.0.1:7001"));
    assert_eq!(first.built, 5, "exact, wild, bound, and two's two services");
    let same = node.routes(&node_file("127.0.0.1:7001"));
    assert_eq!(same.built, 0, "nothing changed");
    let app = |r: &Routes, host: &str| {
        http_port(r, at([127, 0, 0, 1], 10080))
            .app(host)
            .expect("routed")
            .clone()
    };
    assert!(Arc::ptr_eq(
        &app(&first, "api.example.com"),
        &app(&same, "api.example.com")
    ));
    let moved = node.routes(&node_file("127.0.0.1:7009"));
    assert_eq!(moved.built, 1, "exact alone");
    assert!(!Arc::ptr_eq(
        &app(&same, "api.example.com"),
        &app(&moved, "api.example.com")
    ));
    assert!(Arc::ptr_eq(
        &app(&same, "www.example.com"),
        &app(&moved, "www.example.com")
    ));
}

/// App `i` in one of its forms (see [`apps_file`]).
fn app_block(i: usize, form: u8) -> String {
    let head = format!("[[apps]]\nname = \"a{i}\"\n");
    let instance =
        |port: u16| format!("[[apps.instances]]\nid = \"i\"\naddress = \"127.0.0.1:{port}\"\n");
    let service =
        |ports: &str| format!("[[apps.services]]\ninternal_port = 80\nports = [ {ports} ]\n");
    let plain = r#"{ port = 10080, handlers = ["http"] }"#;
    match form {
        0 => format!(
            "{head}hostnames = [\"a{i}.test\"]\n{}{}",
            service(plain),
            instance(7000)
        ),
        1 => format!(
            "{head}hostnames = [\"a{i}.test\", \"*.a{i}.test\"]\n{}{}",
            service(&format!(
                r#"{plain}, {{ port = 10443, handlers = ["tls", "http"] }}"#
            )),
            instance(7001)
        ),
        2 => format!(
            "{head}{}{}",
            service(&format!("{{ port = {} }}", 9100 + i)),
            instance(7002)
        ),
        3 => format!(
            "{head}{}{}",
            service(r#"{ port = 10081, bind = "127.0.0.3", handlers = ["http"] }"#),
            instance(7003)
        ),
        _ => format!(
            "{head}hostnames = [\"a{i}.test\"]\n{}{}",
            service(plain),
            instance(7004)
        ),
    }
}

/// A node file with the apps of `forms` that are there (`Some(form)`).
fn apps_file(forms: &[Option<u8>]) -> String {
    let mut file = String::from("[node]\nid = \"e\"\n");
    for (i, form) in forms.iter().enumerate() {
        if let Some(form) = form {
            file.push_str(&app_block(i, *form));
        }
    }
    file
}

/// Everything the routes route by, in order, and a check that every service routed to is
/// the app's entry in the routes' own snapshot (never an older one).
fn describe(r: &Routes) -> Vec<String> {
    let snapshot = r.snapshot.as_ref().expect("snapshot");
    let current = |h: &Arc<HttpApp>| {
        let entry = snapshot
            .apps
            .get(&h.app.name)
            .expect("an app of the snapshot");
        assert!(Arc::ptr_eq(entry, &h.app), "{}: an old entry", h.app.name);
        format!("{} #{}", h.app.name, h.service)
    };
    let mut out = Vec::new();
    for (key, route) in &r.ports {
        match route {
            PortRoute::Tcp(t) => {
                let entry = snapshot.apps.get(&t.app.name).expect("an app");
                assert!(Arc::ptr_eq(entry, &t.app), "{}: an old entry", t.app.name);
                out.push(format!(
                    "{key:?} tcp {} #{} {:?}",
                    t.app.name, t.service, t.proxy_proto
                ));
            }
            PortRoute::Http(hp) => {
                out.push(format!("{key:?} http tls {} users {}", hp.tls, hp.users));
                for (host, h) in &hp.exact {
                    out.push(format!("{key:?} {host} -> {}", current(h)));
                }
                for (host, h) in &hp.wildcard {
                    out.push(format!("{key:?} *.{host} -> {}", current(h)));
                }
            }
        }
    }
    for (name, services) in &r.http_apps {
        let all: Vec<String> = services.iter().map(current).collect();
        out.push(format!("{name}: {all:?}"));
    }
    out.sort();
    out
}

#[tokio::test]
async fn routes_updated_by_the_diff_are_the_routes_built_afresh() {
    // Apps come, go and change form (hostnames, ports, raw TCP, another address) a few at a
    // time; after each change the routes built on the previous ones by the snapshot's diff
    // must route exactly as routes built from nothing.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut forms: Vec<Option<u8>> = (0..12).map(|i| Some((i % 5) as u8)).collect();
    let mut node = Node::new();
    node.routes(&apps_file(&forms));
    for step in 0..60 {
        for _ in 0..=rand(3) {
            let i = rand(forms.len() as u64) as usize;
            forms[i] = match rand(6) {
                5 => None,
                form => Some(form as u8),
            };
        }
        let file = apps_file(&forms);
        let updated = node.routes(&file);
        let afresh = Node::new().routes(&file);
        assert_eq!(
            describe(&updated),
            describe(&afresh),
            "step {step}: {forms:?}"
        );
        let diff = node.current.as_ref().and_then(|s| s.diff.as_ref());
        assert!(
            diff.is_some_and(|d| d.built.len() + d.gone.len() <= 4),
            "step {step}: built by the diff of the apps changed ({diff:?})"
        );
    }
}
