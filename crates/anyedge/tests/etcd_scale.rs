//! The etcd store at catalog sizes past etcd's and gRPC's default limits, with a real etcd on
//! default flags and the real binary: `apps put` of 1,000 apps (more than the 128 operations
//! one transaction may hold) and `apps list` of them; a node loading 20,000 apps (a listing
//! larger than gRPC's default 4 MiB message) serves one of them within a bounded time.
//! Timings are printed (`--nocapture`) for docs/cluster.md.

use anyedge_test_support::etcd::{output_text, Etcd};
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `anyedge ARGS... --etcd URL`.
fn cli(etcd: &Etcd, args: &[&str]) -> Output {
    etcd.cli(bin(), args)
}

fn stdout(o: &Output) -> String {
    output_text(o).0
}

fn stderr(o: &Output) -> String {
    output_text(o).1
}

/// A plain HTTP GET; `None` when the connection fails or closes without an answer.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    anyedge_test_support::cluster::get(addr, host, path).await
}

/// An apps file of `n` minimal apps (a name and a hostname each), plus `extra` as it is.
fn apps_file(dir: &Path, n: usize, extra: &str) -> PathBuf {
    let mut text = String::with_capacity(n * 64);
    for i in 0..n {
        let _ = write!(
            text,
            "[[apps]]\nname = \"app-{i:05}\"\nhostnames = [\"app-{i:05}.test\"]\n"
        );
    }
    text += extra;
    let file = dir.join(format!("apps-{n}.toml"));
    std::fs::write(&file, text).expect("write apps file");
    file
}

/// Put `file` with the CLI; returns how long it took.
fn put(etcd: &Etcd, file: &Path) -> Duration {
    let started = Instant::now();
    let out = cli(etcd, &["apps", "put", file.to_str().expect("utf-8")]);
    let took = started.elapsed();
    assert!(out.status.success(), "apps put: {}", stderr(&out));
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_put_of_1000_apps_goes_in_and_lists_back() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = apps_file(dir.path(), 1000, "");
    let took = put(&etcd, &file);
    eprintln!("apps put of 1,000 apps: {took:?}");

    let list = cli(&etcd, &["apps", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let listed = stdout(&list);
    assert_eq!(listed.lines().count(), 1 + 1000, "{listed}");
    assert!(
        listed.contains("app-00999\tapp-00999.test\t-\t0"),
        "{listed}"
    );

    // Again, over the apps it wrote: the same file is accepted (the apps are its own), and a
    // clash with one of the 1,000 is still found.
    let again = cli(&etcd, &["apps", "put", file.to_str().expect("utf-8")]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again).lines().count(), 1000);
    let clash = dir.path().join("clash.toml");
    std::fs::write(
        &clash,
        "[[apps]]\nname = \"zzz\"\nhostnames = [\"app-00500.test\"]\n",
    )
    .expect("write");
    let refused = cli(&etcd, &["apps", "put", clash.to_str().expect("utf-8")]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("app-00500.test belongs to app `app-00500`"),
        "{}",
        stderr(&refused)
    );
}

/// A node on the etcd store running `hello`'s instance at `instance`.
fn start_node(etcd: &Etcd, dir: &Path, instance: SocketAddr) -> (Proc, SocketAddr, PathBuf) {
    let admin = local(free_port());
    let toml = format!(
        "[node]\nid = \"n1\"\nregion = \"ord\"\ndrain_timeout = \"1s\"\n[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n[[instances]]\napp = \"hello\"\nid = \"i1\"\naddress = \"{instance}\"\n",
        etcd.url()
    );
    let config = dir.join("node.toml");
    std::fs::write(&config, toml).expect("write node file");
    let log = dir.join("node.log");
    (
        Proc::anyedge_run(bin(), &config, admin, &log, None),
        admin,
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_loads_20000_apps_and_serves_one() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let hello = format!(
        "[[apps]]\nname = \"hello\"\nhostnames = [\"hello.test\"]\n  [[apps.services]]\n  internal_port = 1\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    let took = put(&etcd, &apps_file(dir.path(), 20_000, &hello));
    eprintln!("apps put of 20,001 apps: {took:?}");

    let inst = HttpInstance::start("hello-1", false).await;
    let started = Instant::now();
    let (_node, admin, log) = start_node(&etcd, dir.path(), inst.addr);
    let body = eventually("hello served", Duration::from_secs(40), || async {
        http_get(local(port), "hello.test", "/")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await
    .1;
    eprintln!(
        "node start to serving with 20,001 apps: {:?}",
        started.elapsed()
    );
    assert!(body.contains("hello-1"), "{body}");
    let health = eventually(
        "every app in the snapshot",
        Duration::from_secs(10),
        || async {
            http_get(admin, "admin", "/healthz")
                .await
                .filter(|(_, b)| b.contains("\"apps\":20001"))
        },
    )
    .await
    .1;
    assert!(health.contains("\"connected\":true"), "{health}");
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(log.contains("etcd catalog listed"), "{log}");
}
