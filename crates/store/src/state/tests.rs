//! The catalog state: apply, the diff of two listings, and config assembly.

use super::*;
use crate::values::encode_app;

fn app(toml: &str) -> App {
    anyedge_config::parse_apps(toml, "t", None)
        .expect("valid")
        .remove(0)
}

fn web(name: &str, host: &str) -> App {
    app(&format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"{host}\"]\n[[apps.services]]\ninternal_port = 8080\nports = [{{ port = 80, handlers = [\"http\"] }}]\n"
    ))
}

fn put(key: &str, value: Vec<u8>) -> Change {
    Change::Put {
        key: key.as_bytes().to_vec(),
        value,
    }
}

fn instance(id: &str, node: &str, address: &str) -> Vec<u8> {
    format!(r#"{{"schema":1,"id":"{id}","region":"syd","address":"{address}","node":"{node}"}}"#)
        .into_bytes()
}

fn base(node_file: &str) -> Config {
    anyedge_config::parse(node_file, "node.toml").expect("valid node file")
}

const NODE: &str = "[node]\nid = \"me\"\nregion = \"ord\"\n[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n";

#[test]
fn apply_reports_only_real_changes() {
    let mut s = CatalogState::new(Keys::default());
    assert!(s.apply(put("/anyedge/apps/a", encode_app(&web("a", "a.test")))));
    assert!(!s.apply(put("/anyedge/apps/a", encode_app(&web("a", "a.test")))));
    // A bad value is skipped: the app stays as it was.
    assert!(!s.apply(put("/anyedge/apps/a", b"{oops".to_vec())));
    assert_eq!(s.apps().count(), 1);
    assert!(!s.apply(put("/anyedge/certs/x", b"whatever".to_vec())));
    assert!(s.apply(Change::Delete {
        key: b"/anyedge/apps/a".to_vec()
    }));
    assert!(!s.apply(Change::Delete {
        key: b"/anyedge/apps/a".to_vec()
    }));
    assert_eq!(s.apps().count(), 0);
}

#[test]
fn diff_of_two_listings_leads_to_the_second() {
    let listing = |entries: &[(&str, &[u8])]| -> Vec<(Vec<u8>, Vec<u8>)> {
        entries
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    };
    let first = listing(&[
        ("/anyedge/apps/a", &encode_app(&web("a", "a.test"))),
        ("/anyedge/apps/b", &encode_app(&web("b", "b.test"))),
        ("/anyedge/instances/a/i1", &instance("i1", "w1", "10.0.0.1")),
        ("/anyedge/other", b"x"),
    ]);
    let second = listing(&[
        ("/anyedge/apps/a", &encode_app(&web("a", "a2.test"))),
        ("/anyedge/apps/c", &encode_app(&web("c", "c.test"))),
        ("/anyedge/instances/a/i1", &instance("i1", "w1", "10.0.0.1")),
        ("/anyedge/instances/a/i2", &instance("i2", "w2", "10.0.0.2")),
    ]);
    let mut s = CatalogState::new(Keys::default());
    for c in s.diff(&first) {
        s.apply(c);
    }
    let changes = s.diff(&second);
    let keys: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::Put { key, .. } => format!("put {}", String::from_utf8_lossy(key)),
            Change::Delete { key } => format!("delete {}", String::from_utf8_lossy(key)),
        })
        .collect();
    assert_eq!(
        keys,
        [
            "put /anyedge/apps/a",
            "put /anyedge/apps/c",
            "put /anyedge/instances/a/i2",
            "delete /anyedge/apps/b",
            "delete /anyedge/other",
        ]
    );
    for c in changes {
        s.apply(c);
    }
    assert!(s.diff(&second).is_empty());
    let names: Vec<&str> = s.apps().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(s.instances().count(), 2);
}

#[test]
fn config_joins_apps_remote_instances_and_the_nodes_own() {
    let mut s = CatalogState::new(Keys::default());
    s.apply(put("/anyedge/apps/a", encode_app(&web("a", "a.test"))));
    s.apply(put(
        "/anyedge/instances/a/r1",
        instance("r1", "w1", "10.0.0.1"),
    ));
    // Registered by this node earlier: the file is the truth for it, not etcd.
    s.apply(put(
        "/anyedge/instances/a/old",
        instance("old", "me", "10.0.0.9"),
    ));
    // Another node claiming this node's instance id loses to the file.
    s.apply(put(
        "/anyedge/instances/a/mine",
        instance("mine", "w2", "10.0.0.7"),
    ));
    // An instance of an app etcd does not have is kept but not used.
    s.apply(put(
        "/anyedge/instances/ghost/g",
        instance("g", "w1", "10.0.0.3"),
    ));
    let base = base(&format!(
        "{NODE}[[instances]]\napp = \"a\"\nid = \"mine\"\naddress = \"127.0.0.1:9000\"\n"
    ));
    let c = s.config(&base);
    assert_eq!(c.node, base.node);
    assert_eq!(c.apps.len(), 1);
    let ids: Vec<(&str, &str)> = c.apps[0]
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.region.as_str()))
        .collect();
    assert_eq!(ids, [("r1", "syd"), ("mine", "ord")]);
}

#[test]
fn config_leaves_out_clashing_apps_and_instances_that_break_the_port_rule() {
    let mut s = CatalogState::new(Keys::default());
    s.apply(put("/anyedge/apps/a", encode_app(&web("a", "x.test"))));
    s.apply(put("/anyedge/apps/b", encode_app(&web("b", "x.test"))));
    let two = app("[[apps]]\nname = \"two\"\n[[apps.services]]\ninternal_port = 1\nports = [{ port = 81, handlers = [\"http\"] }]\n[[apps.services]]\ninternal_port = 2\nports = [{ port = 82, handlers = [\"http\"] }]\n");
    s.apply(put("/anyedge/apps/two", encode_app(&two)));
    s.apply(put(
        "/anyedge/instances/two/p",
        instance("p", "w", "10.0.0.1:5"),
    ));
    s.apply(put(
        "/anyedge/instances/two/q",
        instance("q", "w", "10.0.0.2"),
    ));
    let tcp = |n: &str| {
        app(&format!("[[apps]]\nname = \"{n}\"\n[[apps.services]]\ninternal_port = 1\nports = [{{ port = 5432, handlers = [] }}]\n"))
    };
    s.apply(put("/anyedge/apps/t1", encode_app(&tcp("t1"))));
    s.apply(put("/anyedge/apps/t2", encode_app(&tcp("t2"))));
    let c = s.config(&base(NODE));
    let names: Vec<&str> = c.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "t1", "two"]);
    let two = &c.apps[2];
    assert_eq!(two.instances.len(), 1);
    assert_eq!(two.instances[0].id, "q");
}
