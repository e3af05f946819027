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
    // The claims are checked again when an app changes or goes, not for an instance.
    s.apply(put(
        "/anyedge/instances/b/i",
        instance("i", "w", "10.0.0.3:80"),
    ));
    let names = |s: &CatalogState| -> Vec<String> {
        let c = s.config(&base(NODE));
        c.apps.iter().map(|a| a.name.clone()).collect()
    };
    assert_eq!(names(&s), ["a", "t1", "two"]);
    s.apply(Change::Delete {
        key: b"/anyedge/apps/a".to_vec(),
    });
    assert_eq!(names(&s), ["b", "t1", "two"], "b has x.test now");
    s.apply(put("/anyedge/apps/t1", encode_app(&web("t1", "t.test"))));
    assert_eq!(names(&s), ["b", "t1", "t2", "two"], "t2 has port 5432 now");
}

/// `[node]` and `[catalog]` of node `id` with `roles`, with `[cluster]` (backhaul) or without.
fn node_file(id: &str, roles: &str, cluster: bool) -> Config {
    let cluster = match cluster {
        true => "[cluster]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        false => "",
    };
    base(&format!(
        "[node]\nid = \"{id}\"\nregion = \"ord\"\nroles = [{roles}]\n{cluster}[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n"
    ))
}

fn node_value(id: &str, advertise: Option<&str>) -> Vec<u8> {
    NodeValue {
        schema: crate::values::SCHEMA,
        id: id.into(),
        region: "syd".into(),
        advertise: advertise.map(String::from),
    }
    .encode()
}

/// Apply `change`; returns (what `apply` said, whether `base`'s config changed).
fn step(s: &mut CatalogState, base: &Config, change: Change) -> (bool, bool) {
    let before = s.config(base);
    let said = s.apply(change);
    (said, s.config(base) != before)
}

#[test]
fn an_edge_is_concerned_by_the_nodes_it_routes_to_and_by_no_other() {
    let me = node_file("me", "\"edge\"", true);
    let mut s = CatalogState::for_viewer(Keys::default(), Viewer::of(&me));
    assert!(s.apply(put("/anyedge/apps/a", encode_app(&web("a", "a.test")))));
    // Another edge joins (no backhaul of its own), a worker joins before its instances: nothing
    // this node routes changed.
    let edge2 = put("/anyedge/nodes/e2", node_value("e2", None));
    assert_eq!(step(&mut s, &me, edge2), (false, false));
    let w1 = put("/anyedge/nodes/w1", node_value("w1", Some("10.0.0.1:4280")));
    assert_eq!(step(&mut s, &me, w1), (false, false));
    assert!(s.config(&me).peers.is_empty(), "no peer without instances");
    // Its instance comes: routed over backhaul to w1, which becomes a peer.
    let i1 = put(
        "/anyedge/instances/a/i1",
        instance("i1", "w1", "127.0.0.1:9"),
    );
    assert_eq!(step(&mut s, &me, i1), (true, true));
    let c = s.config(&me);
    assert_eq!(c.apps[0].instances[0].node.as_deref(), Some("w1"));
    assert_eq!(c.peers.keys().collect::<Vec<_>>(), ["w1"]);
    // Where w1 is reached changes: that concerns it. The other edge leaving does not.
    let moved = put("/anyedge/nodes/w1", node_value("w1", Some("10.0.0.2:4280")));
    assert_eq!(step(&mut s, &me, moved), (true, true));
    let gone = Change::Delete {
        key: b"/anyedge/nodes/e2".to_vec(),
    };
    assert_eq!(step(&mut s, &me, gone), (false, false));
    // This node's own record and instances come from its file, not from etcd.
    let mine = put("/anyedge/nodes/me", node_value("me", Some("10.0.0.3:4280")));
    assert_eq!(step(&mut s, &me, mine), (false, false));
    let own = put(
        "/anyedge/instances/a/own",
        instance("own", "me", "127.0.0.1:9"),
    );
    assert_eq!(step(&mut s, &me, own), (false, false));
    // An instance of an app the catalog does not have is not routed.
    let ghost = put(
        "/anyedge/instances/ghost/g",
        instance("g", "w1", "127.0.0.1:9"),
    );
    assert_eq!(step(&mut s, &me, ghost), (false, false));
    // The worker leaves (its lease revoked: its keys go together).
    for key in ["/anyedge/instances/a/i1", "/anyedge/nodes/w1"] {
        s.apply(Change::Delete {
            key: key.as_bytes().to_vec(),
        });
    }
    let c = s.config(&me);
    assert!(c.apps[0].instances.is_empty() && c.peers.is_empty());
}

#[test]
fn a_worker_only_node_is_concerned_by_no_other_node() {
    let me = node_file("me", "\"worker\"", true);
    let mut s = CatalogState::for_viewer(Keys::default(), Viewer::of(&me));
    assert!(s.apply(put("/anyedge/apps/a", encode_app(&web("a", "a.test")))));
    let w2 = put("/anyedge/nodes/w2", node_value("w2", Some("10.0.0.1:4280")));
    assert_eq!(step(&mut s, &me, w2), (false, false));
    let theirs = put(
        "/anyedge/instances/a/i2",
        instance("i2", "w2", "127.0.0.1:9"),
    );
    assert_eq!(step(&mut s, &me, theirs), (false, false));
    let c = s.config(&me);
    assert!(c.apps[0].instances.is_empty() && c.peers.is_empty());
    // Apps concern every node: a worker serves its instances by them.
    let changed = put("/anyedge/apps/a", encode_app(&web("a", "b.test")));
    assert_eq!(step(&mut s, &me, changed), (true, true));
}

/// A small xorshift generator: the walk below is the same at every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

/// A random put (three times in four) or delete of an app, an instance or a node's record,
/// over a few names so that keys meet again.
fn random_change(rng: &mut Rng) -> Change {
    let nodes = ["me", "w1", "w2", "e1"];
    let (key, value) = match rng.below(3) {
        0 => {
            let name = rng.pick(&["a", "b"]);
            let host = format!("{name}{}.test", rng.below(2));
            (
                format!("/anyedge/apps/{name}"),
                encode_app(&web(name, &host)),
            )
        }
        1 => {
            let (app, id) = (rng.pick(&["a", "b", "c"]), format!("i{}", rng.below(4)));
            let address = format!("127.0.0.{}:9", 1 + rng.below(2));
            let value = instance(&id, rng.pick(&nodes), &address);
            (format!("/anyedge/instances/{app}/{id}"), value)
        }
        _ => {
            let node = rng.pick(&nodes);
            let advertise = [None, Some("10.0.0.1:1"), Some("10.0.0.2:1")][rng.below(3) as usize];
            (
                format!("/anyedge/nodes/{node}"),
                node_value(node, advertise),
            )
        }
    };
    match rng.below(4) {
        0 => Change::Delete {
            key: key.into_bytes(),
        },
        _ => put(&key, value),
    }
}

/// A seeded walk over random puts and deletes of apps, instances and node records, seen by
/// every kind of node: whenever a change alters the node's config, `apply` says so (the node
/// never misses a reload it needs), the per-node count of instances stays true, and the apps
/// kept from the last assembly are those an assembly afresh makes.
#[test]
fn apply_never_hides_a_change_of_the_config() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut skipped = 0;
    for roles in ["\"edge\"", "\"worker\"", "\"edge\", \"worker\""] {
        for cluster in [true, false] {
            let me = node_file("me", roles, cluster);
            let mut s = CatalogState::for_viewer(Keys::default(), Viewer::of(&me));
            for _ in 0..3000 {
                let change = random_change(&mut rng);
                let (said, changed) = step(&mut s, &me, change.clone());
                let at = format!("{roles} cluster={cluster}: {change:?}");
                assert!(said || !changed, "{at}: a change of the config hidden");
                skipped += usize::from(!said);
                let mut count: HashMap<String, usize> = HashMap::new();
                for (_, r) in s.instances() {
                    *count.entry(r.node.clone()).or_default() += 1;
                }
                assert_eq!(s.registered_by, count, "{at}");
                // What is kept of the last assembly never differs from an assembly afresh.
                let kept = s.config(&me);
                forget_assembly(&mut s);
                assert_eq!(kept, s.config(&me), "{at}: a stale assembled app");
            }
        }
    }
    assert!(skipped > 1000, "the walk skipped only {skipped} changes");
}

/// Make the next assembly build every app afresh.
fn forget_assembly(s: &mut CatalogState) {
    let assembled = s.assembled.get_mut().expect("not poisoned");
    assembled.apps = None;
    assembled.left_out.clear();
    assembled.claims_stale = true;
}

/// The assembly by the diff (the apps changed since put into the list last handed over, by
/// name) against one afresh, over 1,000 app names (many chunks of the list, split and emptied),
/// after batches of 1 to 40 random changes: apps put (some claiming a hostname another has) and
/// deleted, instances and node records put and deleted. Every assembly is checked, and the
/// unchanged apps' chunks are the previous list's own.
#[test]
fn an_assembly_by_the_diff_is_one_afresh() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let names: Vec<String> = (0..1000).map(|i| format!("app{i:04}")).collect();
    for cluster in [true, false] {
        let me = node_file("me", "\"edge\"", cluster);
        let mut s = CatalogState::for_viewer(Keys::default(), Viewer::of(&me));
        let mut last = s.config(&me);
        for round in 0..300 {
            let batch = 1 + rng.below(40);
            let mut node_changed = false;
            for _ in 0..batch {
                let name = &names[rng.below(names.len() as u64) as usize];
                let nodes = ["w1", "w2", "me"];
                let (key, value) = match rng.below(20) {
                    0..=9 => {
                        // One hostname in 50 is another app's: the claims leave one out.
                        let host = match rng.below(50) {
                            0 => "taken.test".to_string(),
                            _ => format!("{name}.test"),
                        };
                        (
                            format!("/anyedge/apps/{name}"),
                            encode_app(&web(name, &host)),
                        )
                    }
                    10..=18 => {
                        let id = format!("i{}", rng.below(3));
                        let address = format!("127.0.0.{}:9", 1 + rng.below(3));
                        let value = instance(&id, rng.pick(&nodes), &address);
                        (format!("/anyedge/instances/{name}/{id}"), value)
                    }
                    _ => {
                        node_changed = true;
                        let node = rng.pick(&nodes);
                        let advertise = [None, Some("10.0.0.1:1")][rng.below(2) as usize];
                        (
                            format!("/anyedge/nodes/{node}"),
                            node_value(node, advertise),
                        )
                    }
                };
                let change = match rng.below(5) {
                    0 => Change::Delete {
                        key: key.into_bytes(),
                    },
                    _ => put(&key, value),
                };
                s.apply(change);
            }
            let by_diff = s.config(&me);
            let unchanged = by_diff
                .apps
                .parts()
                .iter()
                .filter(|c| last.apps.parts().iter().any(|o| Arc::ptr_eq(o, c)))
                .count();
            forget_assembly(&mut s);
            let afresh = s.config(&me);
            assert_eq!(by_diff, afresh, "cluster={cluster} round {round}");
            // A node's record may concern every app with instances on it.
            if round > 100 && !node_changed {
                assert!(
                    unchanged + 2 * batch as usize >= by_diff.apps.parts().len(),
                    "round {round}: {unchanged} of {} chunks kept after {batch} changes",
                    by_diff.apps.parts().len()
                );
            }
            last = afresh;
        }
        assert!(last.apps.len() > 500, "{} apps", last.apps.len());
    }
}

/// The grace rule (`grace.rs`): what an edge keeps of a worker whose registrations went away.
#[test]
fn instances_lost_with_their_nodes_lease_are_kept_while_reported_and_no_longer() {
    let edge = node_file("me", "\"edge\"", true);
    let del = |key: &str| Change::Delete {
        key: key.as_bytes().to_vec(),
    };
    let ids = |c: &Config| -> Vec<String> {
        c.apps
            .iter()
            .flat_map(|a| a.instances.iter().map(|i| format!("{}/{}", a.name, i.id)))
            .collect()
    };
    let mut s = CatalogState::for_viewer(Keys::default(), Viewer::of(&edge));
    s.apply(put("/anyedge/apps/a", encode_app(&web("a", "a.test"))));
    s.apply(put("/anyedge/apps/b", encode_app(&web("b", "b.test"))));
    s.apply(put(
        "/anyedge/nodes/w1",
        node_value("w1", Some("10.0.0.1:4280")),
    ));
    for (app, id) in [("a", "i1"), ("a", "i2"), ("b", "j1")] {
        let key = format!("/anyedge/instances/{app}/{id}");
        s.apply(put(&key, instance(id, "w1", "10.0.0.1")));
    }
    let all = ["a/i1", "a/i2", "b/j1"];
    let reports_all = |node: &str, i: &str| node == "w1" && all.contains(&i);
    let now = Instant::now();

    // Deregistered by a node that stays registered: gone at once, reported or not.
    s.next_batch();
    s.apply(del("/anyedge/instances/a/i2"));
    let c = s.config_graced(&edge, now, &reports_all);
    assert_eq!(ids(&c), ["a/i1", "b/j1"]);

    // The lease ends: node and instances go together. Kept, over backhaul to the node as it
    // was, while the worker reports them; the app removed meanwhile takes its instance along.
    s.next_batch();
    for key in [
        "/anyedge/instances/a/i1",
        "/anyedge/nodes/w1",
        "/anyedge/instances/b/j1",
    ] {
        s.apply(del(key));
    }
    s.apply(del("/anyedge/apps/b"));
    let now = Instant::now();
    let c = s.config_graced(&edge, now, &reports_all);
    assert_eq!(
        ids(&c),
        ["a/i1"],
        "i2 was deregistered before; b was removed"
    );
    assert_eq!(c.apps[0].instances[0].node.as_deref(), Some("w1"));
    assert_eq!(c.peers["w1"].advertise, "10.0.0.1:4280");
    assert_eq!(s.graced(now, &reports_all), ["a/i1"]);
    assert!(
        ids(&s.config(&edge)).is_empty(),
        "nothing reported: nothing kept"
    );
    let reports_none = |_: &str, _: &str| false;
    assert!(ids(&s.config_graced(&edge, now, &reports_none)).is_empty());

    // No longer than the bound.
    let late = now + grace::GRACE;
    assert!(ids(&s.config_graced(&edge, late, &reports_all)).is_empty());
    assert!(!s.has_departed(late));
    assert!(s.has_departed(now));

    // The node registers again: what it registers is the truth once its instance keys had
    // time to follow its node key.
    s.apply(put(
        "/anyedge/nodes/w1",
        node_value("w1", Some("10.0.0.1:4280")),
    ));
    let back = Instant::now();
    assert_eq!(ids(&s.config_graced(&edge, back, &reports_all)), ["a/i1"]);
    let settled = back + grace::SETTLE;
    assert!(ids(&s.config_graced(&edge, settled, &reports_all)).is_empty());
    s.apply(put(
        "/anyedge/instances/a/i1",
        instance("i1", "w1", "10.0.0.1"),
    ));
    assert_eq!(
        ids(&s.config_graced(&edge, settled, &reports_all)),
        ["a/i1"]
    );
}
