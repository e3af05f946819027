//! The house by role, kept so: the modules of `anyedge-edge` (and of the `anyedge` binary crate)
//! import one another one way only, and a role's code imports only what its role may. Read off
//! the source's `crate::` paths (tests aside), so a forbidden `use` fails `scripts/test`.
//!
//! The rules (`docs/architecture.md`, "Roles as folders"):
//! - `instance` (talking to an instance, both roles) imports none of `front`, `backhaul`,
//!   `worker`, `routes`, `admit`, `health`: it is below them all;
//! - `h2server` (our HTTP/2 server, for clients and for edges) imports none of them either;
//! - `worker` imports neither the client-facing `front` nor the edge's side of `backhaul`;
//! - `backhaul` (the edge's side) imports neither `front` nor `worker`;
//! - `front` imports nothing of `worker`;
//! - no cycle between the top-level modules of either crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `(module, modules it may not import)`.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "instance",
        &["front", "backhaul", "worker", "routes", "admit", "health"],
    ),
    (
        "h2server",
        &["front", "backhaul", "worker", "routes", "admit", "health"],
    ),
    ("worker", &["front", "backhaul"]),
    ("backhaul", &["front", "worker"]),
    ("front", &["worker"]),
];

/// The top-level module a source file belongs to (`src/front/http/service.rs` -> `front`,
/// `src/front.rs` -> `front`); `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The top-level modules `text` names through `crate::...` (in `use` lines and paths), leaving
/// out everything from the first `#[cfg(test)]` on (unit tests may reach across).
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        // `use crate::{a, b::c}`: every name in the braces.
        if let Some(braces) = line.split("crate::{").nth(1) {
            for part in braces.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && !is_test_file(&p) {
            out.push(p);
        }
    }
}

/// A unit-test module in a file of its own (`mod tests;` under `#[cfg(test)]`): tests may
/// reach across roles.
fn is_test_file(p: &Path) -> bool {
    p.file_stem()
        .is_some_and(|s| s == "tests" || s == "unit_tests")
}

/// Module -> the other top-level modules it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(src, f) else { continue };
        let text = std::fs::read_to_string(f).expect("read source");
        let deps = graph.entry(m.clone()).or_default();
        for dep in imports(&text) {
            if dep != m && modules.contains(&dep) {
                deps.insert(dep);
            }
        }
    }
    graph
}

/// Every forbidden import, as `module -> dependency`.
fn violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (module, banned) in FORBIDDEN {
        for dep in graph.get(*module).into_iter().flatten() {
            if banned.contains(&dep.as_str()) {
                out.push(format!("{module} imports {dep}"));
            }
        }
    }
    out
}

/// A cycle between modules, as a path `a -> b -> a`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn the_edge_crates_roles_import_one_way() {
    let g = graph(&crate_src("edge"));
    assert!(
        g.contains_key("instance") && g.contains_key("worker"),
        "{g:?}"
    );
    let bad = violations(&g);
    assert!(bad.is_empty(), "forbidden imports: {bad:?}");
    assert_eq!(cycle(&g), None, "module cycle in anyedge-edge: {g:?}");
}

#[test]
fn the_binary_crates_modules_have_no_cycle() {
    let g = graph(&crate_src("anyedge"));
    assert!(g.contains_key("node"), "{g:?}");
    assert_eq!(cycle(&g), None, "module cycle in anyedge: {g:?}");
}

#[test]
fn the_check_catches_a_forbidden_import_and_a_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("instance")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "mod instance;\nmod front;\n").expect("write");
    std::fs::write(src.join("instance.rs"), "mod pool;\n").expect("write");
    std::fs::write(
        src.join("instance/pool.rs"),
        "use crate::{error, front::http::Thing};\n#[cfg(test)]\nmod tests { use crate::worker::X; }\n",
    )
    .expect("write");
    std::fs::write(src.join("front.rs"), "use crate::instance::pool;\n").expect("write");
    // A unit-test file may import anything.
    std::fs::create_dir_all(src.join("instance/pool")).expect("mkdir");
    std::fs::write(
        src.join("instance/pool/tests.rs"),
        "use crate::worker::Y;\n",
    )
    .expect("write");
    let g = graph(src);
    assert_eq!(violations(&g), vec!["instance imports front".to_string()]);
    let c = cycle(&g).expect("instance -> front -> instance");
    assert!(c.len() == 3 && c[0] == c[2], "{c:?}");
}
