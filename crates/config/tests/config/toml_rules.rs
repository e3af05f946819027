//! One test per rule that spans blocks (ports, hostnames, names, instance ports, store).

use crate::{app, errors, line_of, ok, one};

fn two_apps(a_ports: &str, b_ports: &str) -> String {
    format!(
        "[[apps]]\nname = \"first\"\nservices = [{{ internal_port = 1, ports = [{a_ports}] }}]\n\n[[apps]]\nname = \"second\"\nservices = [{{ internal_port = 1,\n  ports = [{b_ports}] }}]\n"
    )
}

#[test]
fn raw_tcp_port_in_two_apps() {
    let text = two_apps("{ port = 5432 }", "{ port = 5432 }");
    let d = one(
        &text,
        "apps[1].services[0].ports[0].port",
        "  ports",
        "raw TCP port 5432 on every address is already used by app `first` (first at line 3); a raw TCP port belongs to one app per bind address",
    );
    assert_eq!(d.line, Some(8));
}

#[test]
fn raw_tcp_port_and_bind_in_two_apps() {
    let text = two_apps(
        "{ port = 5432, bind = \"127.0.0.2\" }",
        "{ port = 5432, bind = \"127.0.0.2\" }",
    );
    one(
        &text,
        "apps[1].services[0].ports[0].port",
        "  ports",
        "raw TCP port 5432 on 127.0.0.2 is already used by app `first`",
    );
    ok(&two_apps(
        "{ port = 5432, bind = \"127.0.0.2\" }",
        "{ port = 5432, bind = \"127.0.0.3\" }",
    ));
}

#[test]
fn proxy_proto_raw_port_in_two_apps() {
    let p = "{ port = 25, handlers = [\"proxy_proto\"] }";
    one(
        &two_apps(p, p),
        "apps[1].services[0].ports[0].port",
        "  ports",
        "raw TCP port 25 on every address is already used by app `first`",
    );
}

#[test]
fn tls_and_http_ports_are_shared() {
    let p = "{ port = 443, handlers = [\"tls\", \"http\"] }, { port = 8443, handlers = [\"tls\"] }";
    assert_eq!(ok(&two_apps(p, p)).apps.len(), 2);
}

#[test]
fn one_port_with_two_handler_lists() {
    let text = two_apps(
        "{ port = 80, handlers = [\"http\"] }",
        "{ port = 80, handlers = [\"tls\", \"http\"] }",
    );
    one(
        &text,
        "apps[1].services[0].ports[0].port",
        "  ports",
        "port 80 is declared with handlers [\"tls\", \"http\"] here but with [\"http\"] by app `first` (first at line 3); one port has one handler list",
    );
}

#[test]
fn one_port_with_two_proxy_proto_versions() {
    let text = two_apps(
        "{ port = 443, handlers = [\"tls\", \"proxy_proto\"], proxy_proto = \"v2\" }",
        "{ port = 443, handlers = [\"tls\", \"proxy_proto\"] }",
    );
    one(
        &text,
        "apps[1].services[0].ports[0].port",
        "  ports",
        "with [\"tls\", \"proxy_proto\"] (proxy_proto v2) by app `first`",
    );
}

#[test]
fn same_port_twice_in_one_app() {
    let text = app(
        "  internal_port = 1\n  ports = [{ port = 80, handlers = [\"http\"] }]\n\n  [[apps.services]]\n  internal_port = 2\n  ports = [{ port = 80, handlers = [\"http\"] }]",
        "",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{}", crate::show(&errs));
    assert_eq!(errs[0].path, "apps[0].services[1].ports[0].port");
    assert_eq!(errs[0].line, Some(14));
    assert!(
        errs[0]
            .message
            .contains("port 80 is declared twice in app `web`"),
        "{}",
        errs[0]
    );
}

#[test]
fn service_without_ports() {
    let text = app("  internal_port = 1", "");
    one(
        &text,
        "apps[0].services[0]",
        "[[apps.services]]",
        "a service needs at least one port",
    );
}

#[test]
fn force_https_needs_a_tls_http_port() {
    let text = app("  internal_port = 1\n  force_https = true\n  ports = [{ port = 80, handlers = [\"http\"] }]", "");
    one(
        &text,
        "apps[0].services[0].force_https",
        "force_https",
        "force_https needs a port with handlers [\"tls\", \"http\"]",
    );
}

#[test]
fn hostname_claimed_by_two_apps_case_insensitively() {
    let text = "[[apps]]\nname = \"a\"\nhostnames = [\"www.example.com\"]\n[[apps]]\nname = \"b\"\nhostnames = [\"WWW.Example.com\"]\n";
    one(
        text,
        "apps[1].hostnames[0]",
        "WWW",
        "hostname `www.example.com` is already claimed by app `a` (first at line 3); a hostname belongs to one app",
    );
}

#[test]
fn wildcard_and_specific_hostnames_coexist() {
    let text = "[[apps]]\nname = \"a\"\nhostnames = [\"*.example.com\"]\n[[apps]]\nname = \"b\"\nhostnames = [\"www.example.com\"]\n";
    assert_eq!(ok(text).apps[0].hostnames, vec!["*.example.com"]);
}

#[test]
fn duplicate_app_name() {
    let text = "[[apps]]\nname = \"a\"\n[[apps]]\nname = \"a\" # again\n";
    let d = one(
        text,
        "apps[1].name",
        "# again",
        "duplicate app name `a` (first at line 2)",
    );
    assert_eq!((d.line, d.column), (Some(4), Some(8)));
}

#[test]
fn duplicate_instance_id() {
    let text = app(
        "  internal_port = 1\n  ports = [{ port = 80, handlers = [\"http\"] }]",
        "  [[apps.instances]]\n  id = \"i1\"\n  address = \"10.0.0.1\"\n  [[apps.instances]]\n  id = \"i1\" # again\n  address = \"10.0.0.2\"\n",
    );
    let d = one(
        &text,
        "apps[0].instances[1].id",
        "# again",
        "duplicate instance id `i1` (first at line",
    );
    assert_eq!(d.line, Some(line_of(&text, "10.0.0.2") - 1));
}

#[test]
fn instance_without_any_port() {
    let text = app(
        "  ports = [{ port = 80, handlers = [\"http\"] }]",
        "  [[apps.instances]]\n  id = \"i1\"\n  address = \"10.0.0.1\"\n",
    );
    one(
        &text,
        "apps[0].instances[0].address",
        "10.0.0.1",
        "instance `i1` has no port, and service 0 of app `web` has no internal_port",
    );
    let with_port = text.replace("10.0.0.1", "10.0.0.1:8080");
    assert_eq!(ok(&with_port).apps[0].instances[0].address.port, Some(8080));
}

#[test]
fn instance_port_with_two_services_is_ambiguous() {
    let text = app(
        "  internal_port = 1\n  ports = [{ port = 80, handlers = [\"http\"] }]\n  [[apps.services]]\n  internal_port = 2\n  ports = [{ port = 5432 }]",
        "  [[apps.instances]]\n  id = \"i1\"\n  address = \"10.0.0.1:9000\"\n",
    );
    one(
        &text,
        "apps[0].instances[0].address",
        "10.0.0.1",
        "instance `i1` names port 9000, but app `web` has 2 services",
    );
    ok(&text.replace("10.0.0.1:9000", "10.0.0.1"));
}

#[test]
fn top_level_instances_need_the_etcd_store() {
    let text = "[[instances]]\napp = \"a\"\nid = \"i\"\naddress = \"127.0.0.1:1\"\n";
    one(
        text,
        "instances",
        "[[instances]]",
        "top-level [[instances]] are for store = \"etcd\"",
    );
}

#[test]
fn apps_do_not_belong_with_the_etcd_store() {
    let text = "[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n[[apps]]\nname = \"a\"\n";
    one(
        text,
        "apps",
        "[[apps]]",
        "[[apps]] do not belong in a node file with store = \"etcd\"",
    );
}

#[test]
fn local_instances_are_checked() {
    let text = "[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n[[instances]]\napp = \"a\"\nid = \"i\"\naddress = \"127.0.0.1:1\"\n[[instances]]\napp = \"a\"\nid = \"i\"\naddress = \"bad host\"\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{}", crate::show(&errs));
    assert_eq!(errs[0].path, "instances[1].id");
    assert!(errs[0]
        .message
        .contains("duplicate instance (app/id) `a/i`"));
    assert_eq!(errs[1].path, "instances[1].address");
    assert_eq!(errs[1].line, Some(line_of(text, "bad host")));
}

#[test]
fn a_bound_port_beside_the_same_port_on_every_address() {
    // One wildcard listener serves both; connections route by their local address.
    ok(&two_apps(
        "{ port = 5432 }",
        "{ port = 5432, bind = \"127.0.0.2\" }",
    ));
    // `0.0.0.0` is every address: the same as no bind, so two raw TCP apps clash.
    let text = two_apps("{ port = 5432, bind = \"0.0.0.0\" }", "{ port = 5432 }");
    assert!(anyedge_config::parse(&text, "t.toml").is_err());
}
