//! One test per validation error of a single value in anyedge TOML: message, path and line.

use crate::{app, errors, line_of, one};

const SVC: &str = "  internal_port = 8080\n  ports = [{ port = 80, handlers = [\"http\"] }]";

#[test]
fn syntax_error_has_line_and_column() {
    let text = "[node]\nid = \"a\"\nregion = \n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(3));
    assert_eq!(errs[0].column, Some(10));
    assert!(errs[0].message.starts_with("TOML syntax:"), "{}", errs[0]);
}

#[test]
fn type_error_has_its_place() {
    let text = "[node]\nid = \"a\"\nthreads = \"four\"\n";
    one(
        text,
        "node.threads",
        "threads",
        "invalid type: string \"four\", expected a non-negative integer",
    );
}

#[test]
fn unknown_section() {
    one(
        "[nodez]\nid = \"a\"\n",
        "nodez",
        "[nodez]",
        "unknown section `nodez`",
    );
}

#[test]
fn unknown_key() {
    let text = "[node]\nid = \"a\"\nregoin = \"ord\"\n";
    let d = one(text, "node.regoin", "regoin", "unknown key `regoin`");
    assert_eq!(d.column, Some(1));
}

#[test]
fn unknown_key_deep_in_an_inline_table() {
    let text = app(
        "  internal_port = 8080\n  ports = [{ port = 80, handlers = [\"http\"], porxy = \"v1\" }]",
        "",
    );
    one(
        &text,
        "apps[0].services[0].ports[0].porxy",
        "porxy",
        "unknown key `porxy`",
    );
}

#[test]
fn port_zero() {
    let text = app("  internal_port = 8080\n  ports = [{ port = 0 }]", "");
    one(
        &text,
        "apps[0].services[0].ports[0].port",
        "port = 0",
        "port 0 is out of range (1-65535)",
    );
}

#[test]
fn port_too_large() {
    let text = app(
        "  internal_port = 8080\n  ports = [{ port = 80, handlers = [\"http\"] },\n    { port = 65536 }]",
        "",
    );
    one(
        &text,
        "apps[0].services[0].ports[1].port",
        "65536",
        "port 65536 is out of range",
    );
}

#[test]
fn internal_port_out_of_range() {
    let text = app(
        "  internal_port = 70000\n  ports = [{ port = 80, handlers = [\"http\"] }]",
        "",
    );
    one(
        &text,
        "apps[0].services[0].internal_port",
        "70000",
        "port 70000 is out of range",
    );
}

#[test]
fn unknown_handler() {
    let text = app(
        "  internal_port = 1\n  ports = [{ port = 80, handlers = [\"https\"] }]",
        "",
    );
    one(
        &text,
        "apps[0].services[0].ports[0].handlers[0]",
        "https",
        "unknown handler `https` (known: \"tls\", \"http\", \"proxy_proto\")",
    );
}

#[test]
fn duplicate_handler() {
    let text = app(
        "  internal_port = 1\n  ports = [{ port = 443, handlers = [\"tls\", \"tls\"] }]",
        "",
    );
    one(
        &text,
        "apps[0].services[0].ports[0].handlers[1]",
        "443",
        "duplicate handler `tls`",
    );
}

#[test]
fn unsupported_handler_list() {
    for list in [
        r#"["http", "tls"]"#,
        r#"["proxy_proto", "tls"]"#,
        r#"["http", "proxy_proto"]"#,
    ] {
        let text = app(
            &format!("  internal_port = 1\n  ports = [{{ port = 443, handlers = {list} }}]"),
            "",
        );
        one(
            &text,
            "apps[0].services[0].ports[0].handlers",
            "443",
            &format!("unsupported handler list {list}; use one of [], [\"proxy_proto\"], [\"tls\"], [\"tls\", \"proxy_proto\"], [\"http\"], [\"tls\", \"http\"]"),
        );
    }
}

#[test]
fn proxy_proto_without_its_handler() {
    let text = app(
        "  internal_port = 1\n  ports = [{ port = 5432, proxy_proto = \"v2\" }]",
        "",
    );
    one(
        &text,
        "apps[0].services[0].ports[0].proxy_proto",
        "5432",
        "proxy_proto is set but the handlers do not include \"proxy_proto\"",
    );
}

#[test]
fn proxy_proto_unknown_version() {
    let text = app(
        "  internal_port = 1\n  ports = [{ port = 5432, handlers = [\"proxy_proto\"], proxy_proto = \"v3\" }]",
        "",
    );
    one(
        &text,
        "apps[0].services[0].ports[0].proxy_proto",
        "v3",
        "unknown proxy_proto version `v3`",
    );
}

#[test]
fn bad_bind_ip() {
    let text = app(
        "  internal_port = 1\n  ports = [{ port = 5432, bind = \"localhost\" }]",
        "",
    );
    one(
        &text,
        "apps[0].services[0].ports[0].bind",
        "5432",
        "invalid bind address `localhost`: expected an IP address",
    );
}

fn instance(address: &str) -> String {
    app(
        SVC,
        &format!("  [[apps.instances]]\n  id = \"i1\"\n  address = \"{address}\"\n"),
    )
}

#[test]
fn address_with_empty_host() {
    one(
        &instance(":8080"),
        "apps[0].instances[0].address",
        "address =",
        "invalid address `:8080`: the host is empty",
    );
}

#[test]
fn address_garbage() {
    one(
        &instance("a b:c"),
        "apps[0].instances[0].address",
        "address =",
        "invalid address `a b:c`: `a b` is not a host name or IP address",
    );
}

#[test]
fn address_with_invalid_port() {
    one(
        &instance("h:0"),
        "apps[0].instances[0].address",
        "address =",
        "invalid port `0`",
    );
    one(
        &instance("h:http"),
        "apps[0].instances[0].address",
        "address =",
        "invalid port `http`",
    );
}

#[test]
fn address_ipv6_needs_brackets() {
    one(
        &instance("::1:80"),
        "apps[0].instances[0].address",
        "address =",
        "write IPv6 addresses in brackets",
    );
}

#[test]
fn address_empty() {
    one(
        &instance(""),
        "apps[0].instances[0].address",
        "address =",
        "address is empty",
    );
}

#[test]
fn app_name_empty() {
    one(
        "[[apps]]\nname = \"\"\n",
        "apps[0].name",
        "name",
        "app name is empty",
    );
}

#[test]
fn app_name_bad_characters() {
    one(
        "[[apps]]\nname = \"my app\"\n",
        "apps[0].name",
        "name",
        "app name `my app` may only contain letters, digits, `.`, `_` and `-`",
    );
}

#[test]
fn app_name_too_long() {
    let text = format!("[[apps]]\nname = \"{}\"\n", "a".repeat(64));
    one(
        &text,
        "apps[0].name",
        "name",
        "is too long (64 characters, at most 63)",
    );
}

#[test]
fn app_name_missing() {
    one(
        "[[apps]]\nhostnames = []\n",
        "apps[0]",
        "[[apps]]",
        "missing field `name`",
    );
}

#[test]
fn hostname_invalid() {
    let text = "[[apps]]\nname = \"a\"\nhostnames = [\"ok.example.com\", \"bad..example.com\"]\n";
    one(
        text,
        "apps[0].hostnames[1]",
        "hostnames",
        "invalid hostname `bad..example.com`: empty label",
    );
}

#[test]
fn hostname_bad_wildcard() {
    let text = "[[apps]]\nname = \"a\"\nhostnames = [\"a.*.example.com\"]\n";
    one(
        text,
        "apps[0].hostnames[0]",
        "hostnames",
        "a wildcard is only allowed as the whole first label",
    );
}

#[test]
fn soft_limit_above_hard_limit() {
    let text = "[[apps]]\nname = \"a\"\nconcurrency = { type = \"requests\", soft_limit = 30, hard_limit = 25 }\n";
    one(
        text,
        "apps[0].concurrency.soft_limit",
        "concurrency",
        "soft_limit (30) is above hard_limit (25)",
    );
}

#[test]
fn hard_limit_zero() {
    let text = "[[apps]]\nname = \"a\"\nconcurrency = { soft_limit = 0, hard_limit = 0 }\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{}", crate::show(&errs));
    assert_eq!(errs[0].path, "apps[0].concurrency.soft_limit");
    assert!(errs[0]
        .message
        .contains("soft_limit must be at least 1, got 0"));
    assert_eq!(errs[1].path, "apps[0].concurrency.hard_limit");
    assert!(errs[1]
        .message
        .contains("hard_limit must be at least 1, got 0"));
    assert_eq!(errs[1].line, Some(3));
}

#[test]
fn unknown_concurrency_type() {
    let text = "[[apps]]\nname = \"a\"\nconcurrency = { type = \"sessions\" }\n";
    one(
        text,
        "apps[0].concurrency.type",
        "concurrency",
        "unknown concurrency type `sessions`",
    );
}

#[test]
fn app_limits_zero_inflight() {
    let text = "[[apps]]\nname = \"a\"\nlimits = { max_inflight = 0 }\n";
    one(
        text,
        "apps[0].limits.max_inflight",
        "limits",
        "max_inflight must be at least 1, got 0",
    );
}

#[test]
fn bad_duration() {
    one(
        "[node]\ndrain_timeout = \"5\"\n",
        "node.drain_timeout",
        "drain_timeout",
        "invalid duration `5`",
    );
    one(
        "[limits]\nconnect_timeout = \"soon\"\n",
        "limits.connect_timeout",
        "connect_timeout",
        "invalid duration `soon`",
    );
    one(
        "[[apps]]\nname = \"a\"\nlimits = { queue_timeout = \"5 parsecs\" }\n",
        "apps[0].limits.queue_timeout",
        "limits",
        "invalid duration `5 parsecs`",
    );
}

#[test]
fn bad_tcp_idle_timeout() {
    one(
        "[[apps]]\nname = \"a\"\n  [[apps.services]]\n  internal_port = 5\n  tcp_options = { idle_timeout = \"forever\" }\n  ports = [ { port = 5432, handlers = [] } ]\n",
        "apps[0].services[0].tcp_options.idle_timeout",
        "tcp_options",
        "invalid duration `forever`",
    );
}

#[test]
fn zero_timeout() {
    one(
        "[limits]\ntls_handshake_timeout = \"0s\"\n",
        "limits.tls_handshake_timeout",
        "tls_handshake",
        "must be greater than zero",
    );
}

#[test]
fn bad_token_hex() {
    let short = "[[apps]]\nname = \"a\"\ntokens_sha256 = [\"9f86d08188\"]\n";
    one(
        short,
        "apps[0].tokens_sha256[0]",
        "tokens",
        "invalid token hash `9f86d08188`: expected 64 hex digits",
    );
    let not_hex = format!(
        "[[apps]]\nname = \"a\"\ntokens_sha256 = [\"{}\"]\n",
        "zz".repeat(32)
    );
    one(
        &not_hex,
        "apps[0].tokens_sha256[0]",
        "tokens",
        "expected 64 hex digits",
    );
}

#[test]
fn replay_from_bad_name() {
    one(
        "[[apps]]\nname = \"a\"\nreplay_from = [\"b c\"]\n",
        "apps[0].replay_from[0]",
        "replay",
        "app name `b c` may only contain",
    );
}

#[test]
fn roles_empty() {
    one(
        "[node]\nroles = []\n",
        "node.roles",
        "roles",
        "roles is empty: name \"edge\", \"worker\" or both",
    );
}

#[test]
fn roles_unknown() {
    one(
        "[node]\nroles = [\"edge\", \"router\"]\n",
        "node.roles[1]",
        "roles",
        "unknown role `router` (known: \"edge\", \"worker\")",
    );
}

#[test]
fn node_id_and_region_names() {
    one(
        "[node]\nid = \"ord 1\"\n",
        "node.id",
        "id",
        "node id `ord 1` may only contain",
    );
    one(
        "[node]\nregion = \"\"\n",
        "node.region",
        "region",
        "region name is empty",
    );
}

#[test]
fn store_unknown() {
    one(
        "[catalog]\nstore = \"consul\"\n",
        "catalog.store",
        "store",
        "unknown store `consul` (known: \"file\", \"etcd\")",
    );
}

#[test]
fn etcd_store_without_endpoints() {
    one(
        "[catalog]\nstore = \"etcd\"\n",
        "catalog.store",
        "store",
        "store = \"etcd\" needs etcd_endpoints",
    );
    one(
        "[catalog]\nstore = \"etcd\"\netcd_endpoints = []\n",
        "catalog.etcd_endpoints",
        "etcd_endpoints",
        "store = \"etcd\" needs etcd_endpoints",
    );
}

#[test]
fn etcd_endpoint_not_a_url() {
    one(
        "[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"127.0.0.1:2379\"]\n",
        "catalog.etcd_endpoints[0]",
        "etcd_endpoints",
        "invalid etcd endpoint `127.0.0.1:2379`: expected http://host:port",
    );
}

#[test]
fn acme_on_the_etcd_store_needs_the_secret_key() {
    one(
        "[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"http://e:2379\"]\n[acme]\ncontact = \"mailto:a@b.c\"\n",
        "catalog.store",
        "store",
        "[acme] with store = \"etcd\" keeps private keys in etcd, sealed with the cluster secret key: set secret_key_file",
    );
}

#[test]
fn etcd_cert_without_key() {
    one(
        "[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"http://e:2379\"]\netcd_cert = \"c.pem\"\n",
        "catalog.etcd_cert",
        "etcd_cert",
        "etcd_cert and etcd_key go together",
    );
}

#[test]
fn bad_admin_listen() {
    one(
        "[admin]\nlisten = \"localhost:9180\"\n",
        "admin.listen",
        "listen",
        "invalid socket address `localhost:9180`: expected IP:port",
    );
}

#[test]
fn bad_backhaul_listen() {
    one(
        "[node]\nbackhaul_listen = \"0.0.0.0\"\n",
        "node.backhaul_listen",
        "backhaul",
        "invalid socket address `0.0.0.0`",
    );
}

#[test]
fn advertise_needs_a_port() {
    one(
        "[node]\nadvertise = \"10.0.0.5\"\n",
        "node.advertise",
        "advertise",
        "a port is required",
    );
}

#[test]
fn cluster_needs_all_three_files() {
    one(
        "[cluster]\nca = \"ca.pem\"\ncert = \"n.pem\"\n",
        "cluster",
        "[cluster]",
        "missing field `key`",
    );
}

#[test]
fn acme_contact_must_be_mailto() {
    one(
        "[acme]\ncontact = [\"ops@example.com\"]\n",
        "acme.contact[0]",
        "contact",
        "invalid ACME contact `ops@example.com`: expected mailto:",
    );
    one(
        "[acme]\ncontact = \"ops\"\n",
        "acme.contact",
        "contact",
        "invalid ACME contact `ops`",
    );
}

#[test]
fn header_prefix_must_be_a_token() {
    one(
        "[http]\nheader_prefix = \"my prefix\"\n",
        "http.header_prefix",
        "header_prefix",
        "invalid header_prefix `my prefix`",
    );
}

#[test]
fn region_coordinates_in_range() {
    let text = "[regions.ord]\nlat = 91.0\nlon = -87.9\n";
    one(
        text,
        "regions.ord.lat",
        "lat",
        "latitude 91 is out of range (-90 to 90)",
    );
    one(
        "[regions.ord]\nlat = 1\n",
        "regions.ord",
        "[regions.ord]",
        "missing field `lon`",
    );
}

#[test]
fn check_settings() {
    let svc = |check: &str| app(&format!("{SVC}\n  checks = [{check}]"), "");
    let t = svc("{ type = \"http\", interval = \"1s\", timeout = \"2s\" }");
    one(
        &t,
        "apps[0].services[0].checks[0].timeout",
        "checks",
        "check timeout (2s) is longer than its interval (1s)",
    );
    let t = svc("{ type = \"tcp\", path = \"/healthz\" }");
    one(
        &t,
        "apps[0].services[0].checks[0].path",
        "checks",
        "path is only for type = \"http\" checks",
    );
    let t = svc("{ type = \"grpc\" }");
    one(
        &t,
        "apps[0].services[0].checks[0].type",
        "checks",
        "unknown check type `grpc`",
    );
    let t = svc("{ type = \"http\", path = \"healthz\" }");
    one(
        &t,
        "apps[0].services[0].checks[0].path",
        "checks",
        "check path `healthz` must start with `/`",
    );
    let t = svc("{ healthy_threshold = 0 }");
    one(
        &t,
        "apps[0].services[0].checks[0].healthy_threshold",
        "checks",
        "healthy_threshold must be at least 1",
    );
}

#[test]
fn services_must_be_a_list() {
    let text = "[[apps]]\nname = \"a\"\n[apps.services]\ninternal_port = 1\n";
    one(
        text,
        "apps[0].services",
        "[apps.services]",
        "`services` must be a list of tables",
    );
}

#[test]
fn line_of_helper_finds_lines() {
    assert_eq!(line_of("a\nb\nc", "c"), 3);
}

const CLUSTER: &str = "[cluster]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"k.pem\"\n";

const NODES_APP: &str = r#"
[[apps]]
name = "hello"
[[apps.services]]
internal_port = 8080
[[apps.services.ports]]
port = 80
handlers = ["http"]
"#;

#[test]
fn instance_names_an_unknown_node() {
    let text = format!(
        "[node]\nid = \"edge-1\"\n{CLUSTER}{NODES_APP}[[apps.instances]]\nid = \"a\"\naddress = \"127.0.0.1\"\nnode = \"syd-1\"\n"
    );
    one(
        &text,
        "apps[0].instances[0].node",
        "node = \"syd-1\"",
        "unknown node `syd-1`",
    );
}

#[test]
fn nodes_need_cluster_tls() {
    let text = "[[nodes]]\nid = \"syd-1\"\nadvertise = \"127.0.0.4:4280\"\n";
    one(text, "nodes", "[[nodes]]", "need [cluster]");
}

#[test]
fn nodes_do_not_list_this_node_and_need_a_port() {
    let text = format!(
        "[node]\nid = \"edge-1\"\n{CLUSTER}[[nodes]]\nid = \"edge-1\"\nadvertise = \"127.0.0.4:4280\"\n[[nodes]]\nid = \"b\"\nadvertise = \"127.0.0.5\"\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", crate::show(&errs));
    assert_eq!(errs[0].path, "nodes[0].id");
    assert!(errs[0].message.contains("this node"), "{}", errs[0]);
    assert_eq!(errs[1].path, "nodes[1].advertise");
}

#[test]
fn backhaul_listen_needs_cluster_tls() {
    one(
        "[node]\nbackhaul_listen = \"127.0.0.1:4280\"\n",
        "node.backhaul_listen",
        "backhaul_listen",
        "needs [cluster]",
    );
}

#[test]
fn retry_on_takes_timeout_and_reset() {
    use crate::ok;
    use anyedge_config::model::RetryOn;
    assert_eq!(ok("").http.retry_on, RetryOn::default());
    let both = RetryOn {
        timeout: true,
        reset: true,
    };
    assert_eq!(both, RetryOn::default(), "both by default");
    let c = ok("[http]\nretry_on = [\"reset\"]\n");
    assert_eq!(
        c.http.retry_on,
        RetryOn {
            timeout: false,
            reset: true
        }
    );
    let c = ok("[http]\nretry_on = []\n");
    assert_eq!(
        c.http.retry_on,
        RetryOn {
            timeout: false,
            reset: false
        }
    );
    one(
        "[http]\nretry_on = [\"timeout\", \"5xx\"]\n",
        "http.retry_on",
        "retry_on",
        "unknown retry condition \"5xx\"",
    );
}

#[test]
fn steering_is_sockets_or_sk_lookup() {
    let text = "[node]\nid = \"a\"\nsteering = \"ebpf\"\n";
    one(
        text,
        "node.steering",
        "steering",
        "unknown steering `ebpf` (known: \"sockets\", \"sk_lookup\")",
    );
}

#[test]
fn bpf_pin_dir_is_absolute() {
    let text = "[node]\nsteering = \"sk_lookup\"\nbpf_pin_dir = \"bpf/anyedge\"\n";
    one(
        text,
        "node.bpf_pin_dir",
        "bpf_pin_dir",
        "`bpf/anyedge` is not an absolute path",
    );
}

#[test]
fn replay_spill_keys_are_an_absolute_directory_and_a_size() {
    use crate::ok;
    let d = ok("");
    assert_eq!(
        d.http.replay_spill_dir,
        std::path::PathBuf::from("/var/tmp/anyedge-spill")
    );
    assert_eq!(d.http.replay_spill_limit, 1 << 30, "1 GiB by default");
    let c = ok("[http]\nreplay_spill_dir = \"/srv/spill\"\nreplay_spill_limit = \"512MiB\"\n");
    assert_eq!(
        c.http.replay_spill_dir,
        std::path::PathBuf::from("/srv/spill")
    );
    assert_eq!(c.http.replay_spill_limit, 512 << 20);
    for (text, n) in [
        ("1048576", 1u64 << 20),
        ("\"2 GiB\"", 2 << 30),
        ("0", 0),
        ("\"7B\"", 7),
    ] {
        let c = ok(&format!("[http]\nreplay_spill_limit = {text}\n"));
        assert_eq!(c.http.replay_spill_limit, n, "{text}");
    }
    one(
        "[http]\nreplay_spill_dir = \"spill\"\n",
        "http.replay_spill_dir",
        "replay_spill_dir",
        "not an absolute path",
    );
    one(
        "[http]\nreplay_spill_limit = \"1GB\"\n",
        "http.replay_spill_limit",
        "replay_spill_limit",
        "KiB, MiB, GiB or TiB",
    );
    one(
        "[http]\nreplay_spill_limit = -1\n",
        "http.replay_spill_limit",
        "replay_spill_limit",
        "at least 0",
    );
    one(
        "[http]\nreplay_spill_limit = \"99999999999TiB\"\n",
        "http.replay_spill_limit",
        "replay_spill_limit",
        "too large",
    );
}
