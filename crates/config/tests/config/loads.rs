//! Files that must load, and what every key maps to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyedge_config::*;

use crate::ok;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hp(host: &str, port: Option<u16>) -> HostPort {
    HostPort {
        host: host.into(),
        port,
    }
}

fn port(port: u16) -> PortSpec {
    PortSpec {
        port,
        bind: None,
        handlers: vec![],
        proxy_proto: None,
    }
}

/// The work sample, as the challenge ships it: 3 apps, 12 ports, 7 targets.
fn check_work_sample(c: &Config) {
    assert_eq!(c.format, Format::WorkSample);
    assert_eq!(c.apps.len(), 3);
    let ports: usize = c.apps.iter().map(|a| a.services[0].ports.len()).sum();
    let targets: usize = c.apps.iter().map(|a| a.instances.len()).sum();
    assert_eq!((ports, targets), (12, 7));
    let six = &c.apps[1];
    assert_eq!(six.name, "six-thousand");
    assert!(six.hostnames.is_empty());
    assert_eq!(six.services.len(), 1);
    assert_eq!(six.services[0].internal_port, None);
    assert_eq!(
        six.services[0].ports,
        vec![port(6001), port(6200), port(6300), port(6400)]
    );
    assert_eq!(
        six.instances[2],
        Instance {
            id: "bad.target.for.testing:6003".into(),
            region: "local".into(),
            address: hp("bad.target.for.testing", Some(6003)),
            node: None,
            driver: None,
        }
    );
    assert_eq!(c.node.region, "local");
    assert!(c.node.roles.edge && c.node.roles.worker);
    assert!(!c.node.id.is_empty());
    assert_eq!(
        c.admin.listen,
        "127.0.0.1:9180".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.catalog, CatalogConfig::File);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.http.header_prefix, "anyedge");
    assert!(c.local_instances.is_empty() && c.cluster.is_none());
}

#[test]
fn work_sample_copy_loads() {
    let c = load(&manifest_dir().join("tests/data/work-sample.json")).unwrap();
    check_work_sample(&c);
}

#[test]
fn work_sample_copy_is_byte_for_byte_the_shared_file() {
    let shared = manifest_dir().join("../../../shared/challenge/config.json");
    let Ok(original) = std::fs::read(&shared) else {
        eprintln!(
            "skipped: {} is not here (shared/ lives elsewhere)",
            shared.display()
        );
        return;
    };
    let copy = std::fs::read(manifest_dir().join("tests/data/work-sample.json")).unwrap();
    assert_eq!(
        original, copy,
        "tests/data/work-sample.json differs from the challenge file"
    );
}

#[test]
fn shared_work_sample_loads() {
    let shared = manifest_dir().join("../../../shared/challenge/config.json");
    if !shared.exists() {
        eprintln!(
            "skipped: {} is not here (shared/ lives elsewhere)",
            shared.display()
        );
        return;
    }
    check_work_sample(&load(&shared).unwrap());
}

#[test]
fn every_example_is_valid() {
    let dir = manifest_dir().join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("toml" | "json")
        ) {
            if let Err(d) = load(&path) {
                panic!("{} is invalid:\n{d}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected the examples in {}", dir.display());
}

#[test]
fn format_is_recognised_by_content() {
    assert_eq!(detect_format("  \n{\"Apps\": []}"), Format::WorkSample);
    assert_eq!(detect_format("\u{feff}{}"), Format::WorkSample);
    assert_eq!(detect_format("# {\n[node]"), Format::Toml);
    assert_eq!(detect_format(""), Format::Toml);
    assert_eq!(ok("{\"Apps\": []}").format, Format::WorkSample);
    assert_eq!(ok("").format, Format::Toml);
}

#[test]
fn empty_toml_takes_every_default() {
    let c = ok("");
    assert!(!c.node.id.is_empty(), "node id defaults to the host name");
    assert_eq!(c.node.region, "local");
    assert_eq!(
        c.node.roles,
        Roles {
            edge: true,
            worker: true
        }
    );
    assert_eq!(c.node.threads, 0);
    assert_eq!(c.node.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.node.steering, anyedge_config::Steering::Sockets);
    assert_eq!(c.node.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/anyedge"));
    assert_eq!(
        (c.node.backhaul_listen, c.node.advertise.clone()),
        (None, None)
    );
    assert_eq!(
        c.admin.listen,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180)
    );
    assert_eq!(c.catalog, CatalogConfig::File);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.http.header_prefix, "anyedge");
    assert_eq!(c.acme, Acme::default());
    assert!(c.apps.is_empty() && c.regions.is_empty() && c.cluster.is_none());
}

#[test]
fn full_design_shaped_toml_maps_every_field() {
    let c = load(&manifest_dir().join("tests/data/full.toml")).unwrap();
    let base = manifest_dir().join("tests/data");
    assert_eq!(c.format, Format::Toml);
    assert_eq!(
        c.node,
        Node {
            id: "ord-1".into(),
            region: "ord".into(),
            roles: Roles {
                edge: true,
                worker: true
            },
            threads: 4,
            drain_timeout: Duration::from_secs(45),
            backhaul_listen: Some("0.0.0.0:4280".parse().unwrap()),
            advertise: Some("10.0.0.5:4280".into()),
            control_socket: Some("/run/anyedge/control.sock".into()),
            steering: anyedge_config::Steering::SkLookup,
            bpf_pin_dir: "/sys/fs/bpf/edge".into(),
        }
    );
    assert_eq!(
        c.admin.listen,
        "127.0.0.1:9181".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.catalog, CatalogConfig::File);
    assert_eq!(
        c.limits,
        Limits {
            max_connections: 20000,
            max_connections_per_ip: 500,
            tls_handshake_timeout: Duration::from_secs(8),
            max_concurrent_handshakes: 2048,
            connect_timeout: Duration::from_millis(1500),
        }
    );
    assert_eq!(
        c.cluster,
        Some(ClusterTls {
            ca: base.join("cluster-ca.pem"),
            cert: base.join("node.pem"),
            key: PathBuf::from("/etc/anyedge/node-key.pem"),
        })
    );
    assert_eq!(
        c.acme,
        Acme {
            enabled: true,
            directory: "https://acme-staging-v02.api.letsencrypt.org/directory".into(),
            contact: vec![
                "mailto:ops@example.com".into(),
                "mailto:oncall@example.com".into()
            ],
            ca_roots: Some(base.join("extra-roots.pem")),
            state_dir: Some(PathBuf::from("/var/lib/anyedge")),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
        }
    );
    assert_eq!(c.http.header_prefix, "fly");
    assert_eq!(
        c.regions["ord"],
        Coordinates {
            lat: 41.98,
            lon: -87.90
        }
    );
    assert_eq!(
        c.regions["syd"],
        Coordinates {
            lat: -33.94,
            lon: 151.0
        }
    );
    assert!(c.local_instances.is_empty());
    assert_eq!(c.apps.len(), 2);

    let hello = &c.apps[0];
    assert_eq!(hello.name, "hello");
    assert_eq!(
        hello.hostnames,
        vec!["hello.example.com", "*.hello.example.com"]
    );
    assert_eq!(
        hello.concurrency,
        Concurrency {
            kind: ConcurrencyType::Requests,
            soft_limit: 20,
            hard_limit: 25
        }
    );
    assert_eq!(
        hello.limits,
        AppLimits {
            max_inflight: 100,
            queue: 50,
            queue_timeout: Duration::from_secs(2),
            max_connections: 300,
        }
    );
    let mut token = [0u8; 32];
    token[..4].copy_from_slice(&[0x9f, 0x86, 0xd0, 0x81]);
    assert_eq!(hello.tokens_sha256.len(), 1);
    assert_eq!(hello.tokens_sha256[0][..4], token[..4]);
    assert_eq!(hello.tokens_sha256[0][31], 0x08);
    assert_eq!(hello.replay_from, vec!["hello-api"]);
    let s = &hello.services[0];
    assert_eq!(s.internal_port, Some(8080));
    assert!(s.force_https);
    assert_eq!(
        s.http_options,
        HttpOptions {
            h2_backend: true,
            idle_timeout: Duration::from_secs(90)
        }
    );
    assert_eq!(
        s.ports,
        vec![
            PortSpec {
                handlers: vec![Handler::Http],
                ..port(80)
            },
            PortSpec {
                handlers: vec![Handler::Tls, Handler::Http],
                ..port(443)
            },
            PortSpec {
                handlers: vec![Handler::ProxyProto],
                proxy_proto: Some(ProxyProtoVersion::V2),
                ..port(5432)
            },
        ]
    );
    assert_eq!(
        s.checks,
        vec![
            Check {
                kind: CheckKind::Http {
                    path: "/healthz".into()
                },
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                grace_period: Duration::from_secs(10),
                unhealthy_threshold: 4,
                healthy_threshold: 1,
            },
            Check {
                kind: CheckKind::Tcp,
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(2),
                grace_period: Duration::from_secs(5),
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            },
        ]
    );
    assert_eq!(
        hello.certificates,
        vec![CertificateFiles {
            cert: base.join("hello.pem"),
            key: base.join("hello-key.pem")
        }]
    );
    assert_eq!(
        hello.instances,
        vec![
            Instance {
                id: "hello-ord-1".into(),
                region: "ord".into(),
                address: hp("127.0.0.1", Some(8081)),
                node: None,
                driver: None,
            },
            Instance {
                id: "hello-syd-1".into(),
                region: "syd".into(),
                address: hp("::1", None),
                node: None,
                driver: None,
            },
            Instance {
                id: "hello-local-1".into(),
                region: "ord".into(),
                address: hp("hello.internal", None),
                node: None,
                driver: None,
            },
        ]
    );
    assert_eq!(hello.instances[0].target(s), Some(("127.0.0.1", 8081)));
    assert_eq!(hello.instances[1].target(s), Some(("::1", 8080)));

    let api = &c.apps[1];
    assert_eq!(api.concurrency, Concurrency::default());
    assert_eq!(api.limits, AppLimits::default());
    assert_eq!(api.services.len(), 2);
    assert_eq!(api.services[0].http_options, HttpOptions::default());
    assert!(api.services[0].checks.is_empty());
    assert_eq!(
        api.services[1].ports,
        vec![PortSpec {
            bind: Some("127.0.0.2".parse().unwrap()),
            ..port(6379)
        }]
    );
    assert_eq!(
        api.instances[0].target(&api.services[1]),
        Some(("10.1.2.3", 9001))
    );
}

#[test]
fn etcd_node_file_maps_local_instances() {
    let c = load(&manifest_dir().join("tests/data/etcd-node.toml")).unwrap();
    let base = manifest_dir().join("tests/data");
    assert_eq!(
        c.node.roles,
        Roles {
            edge: false,
            worker: true
        }
    );
    assert_eq!(c.node.backhaul_listen, Some("[::]:4280".parse().unwrap()));
    assert_eq!(
        c.catalog,
        CatalogConfig::Etcd(EtcdConfig {
            endpoints: vec![
                "https://10.0.0.1:2379".into(),
                "https://10.0.0.2:2379".into()
            ],
            ca: Some(base.join("etcd-ca.pem")),
            cert: Some(base.join("etcd-client.pem")),
            key: Some(base.join("etcd-client-key.pem")),
            secret_key_file: Some(base.join("cluster.key")),
        })
    );
    assert!(c.apps.is_empty());
    assert_eq!(
        c.local_instances,
        vec![
            LocalInstance {
                app: "hello".into(),
                instance: Instance {
                    id: "hello-syd-2".into(),
                    region: "syd".into(),
                    address: hp("127.0.0.1", Some(8081)),
                    node: None,
                    driver: None,
                },
            },
            LocalInstance {
                app: "db".into(),
                instance: Instance {
                    id: "db-syd-2".into(),
                    region: "syd".into(),
                    address: hp("127.0.0.1", None),
                    node: None,
                    driver: None,
                },
            },
        ]
    );
}

#[test]
fn relative_paths_stay_as_written_without_a_base() {
    let c = ok("[cluster]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"k.pem\"\n");
    assert_eq!(c.cluster.unwrap().ca, PathBuf::from("ca.pem"));
    let c = parse_with_base(
        "[acme]\nstate_dir = \"state\"\n",
        "x",
        Some(Path::new("/etc/anyedge")),
    )
    .unwrap();
    assert_eq!(c.acme.state_dir, Some(PathBuf::from("/etc/anyedge/state")));
}

#[test]
fn app_with_zero_instances_and_defaults() {
    let c = ok(&crate::app(
        "  internal_port = 8080\n  ports = [{ port = 80, handlers = [\"http\"] }]",
        "",
    ));
    let web = &c.apps[0];
    assert!(web.instances.is_empty());
    assert_eq!(web.concurrency, Concurrency::default());
    assert!(!web.services[0].force_https);
}

#[test]
fn inline_services_and_apps_are_accepted() {
    let c =
        ok("apps = [{ name = \"a\", services = [{ internal_port = 1, ports = [{ port = 9 }] }] }]");
    assert_eq!(c.apps[0].services[0].ports, vec![port(9)]);
}

#[test]
fn proxy_proto_defaults_to_v1() {
    let c = ok(&crate::app(
        "  internal_port = 1\n  ports = [{ port = 5432, handlers = [\"tls\", \"proxy_proto\"] }]",
        "",
    ));
    assert_eq!(
        c.apps[0].services[0].ports[0].proxy_proto,
        Some(ProxyProtoVersion::V1)
    );
}

#[test]
fn shared_http_ports_and_raw_ports_on_distinct_binds_are_fine() {
    let text = r#"
[[apps]]
name = "a"
hostnames = ["a.example.com"]
services = [{ internal_port = 1, ports = [{ port = 80, handlers = ["http"] }, { port = 443, handlers = ["tls", "http"] }, { port = 5432, bind = "127.0.0.2" }] }]
[[apps]]
name = "b"
hostnames = ["*.example.com"]
services = [{ internal_port = 1, ports = [{ port = 80, handlers = ["http"] }, { port = 443, handlers = ["tls", "http"] }, { port = 5432, bind = "127.0.0.3" }] }]
"#;
    let c = ok(text);
    assert_eq!(c.apps.len(), 2);
}

#[test]
fn soft_limit_defaults_below_a_small_hard_limit() {
    let c = ok("[[apps]]\nname = \"a\"\nconcurrency = { hard_limit = 10 }\n");
    assert_eq!(c.apps[0].concurrency.soft_limit, 10);
    assert_eq!(c.apps[0].concurrency.kind, ConcurrencyType::Connections);
}

#[test]
fn acme_contact_may_be_one_string() {
    let c = ok("[acme]\ncontact = \"mailto:ops@example.com\"\n");
    assert_eq!(c.acme.contact, vec!["mailto:ops@example.com"]);
}

#[test]
fn apps_file_for_apps_put() {
    let apps = parse_apps(
        "[[apps]]\nname = \"a\"\nservices = [{ internal_port = 1, ports = [{ port = 80, handlers = [\"http\"] }] }]\n",
        "apps.toml",
        None,
    )
    .unwrap();
    assert_eq!(apps[0].name, "a");
    let errs = parse_apps("[node]\nid = \"x\"\n[[apps]]\nname = \"a\"\n[[apps.instances]]\nid = \"i\"\naddress = \"h:1\"\n", "apps.toml", None)
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 2, "{}", crate::show(&errs));
    assert_eq!(errs[0].path, "node");
    assert_eq!(errs[1].path, "apps[0].instances");
}

#[test]
fn unreadable_file_is_one_problem() {
    let errs = load(Path::new("/nonexistent/anyedge.toml")).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.starts_with("cannot read"));
}

#[test]
fn file_cluster_maps_nodes_and_remote_instances() {
    let c = ok(r#"
[node]
id = "edge-1"
region = "ord"
[cluster]
ca = "ca.pem"
cert = "n.pem"
key = "k.pem"
[[nodes]]
id = "syd-1"
region = "syd"
advertise = "127.0.0.4:4280"
[[apps]]
name = "hello"
[[apps.services]]
internal_port = 8080
[[apps.services.ports]]
port = 80
handlers = ["http"]
[[apps.instances]]
id = "far"
region = "syd"
address = "127.0.0.1"
node = "syd-1"
[[apps.instances]]
id = "here"
address = "127.0.0.1"
node = "edge-1"
"#);
    assert_eq!(
        c.peers.get("syd-1"),
        Some(&anyedge_config::Peer {
            region: "syd".into(),
            advertise: "127.0.0.4:4280".into(),
        })
    );
    let hello = &c.apps[0];
    assert_eq!(hello.instances[0].node.as_deref(), Some("syd-1"));
    // Naming this node is the same as naming none.
    assert_eq!(hello.instances[1].node, None);
}

#[test]
fn advertise_defaults_to_a_specific_backhaul_listen_address() {
    let cluster = "[cluster]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"k.pem\"\n";
    let c = ok(&format!(
        "[node]\nbackhaul_listen = \"127.0.0.3:4280\"\n{cluster}"
    ));
    assert_eq!(c.node.advertise.as_deref(), Some("127.0.0.3:4280"));
    let c = ok(&format!(
        "[node]\nbackhaul_listen = \"0.0.0.0:4280\"\n{cluster}"
    ));
    assert_eq!(c.node.advertise, None, "a wildcard is not dialable");
    let c = ok(&format!(
        "[node]\nbackhaul_listen = \"0.0.0.0:4280\"\nadvertise = \"10.0.0.5:4280\"\n{cluster}"
    ));
    assert_eq!(c.node.advertise.as_deref(), Some("10.0.0.5:4280"));
}
