//! A large catalog with the real binary (issue 21, items 2 and 3): `/healthz` answers within
//! 50 ms (nine answers in ten; none past 500 ms) while a reload that changes every one of
//! 10,000 apps runs, and a reload that changes
//! one app of many builds that app alone (counted by the node's own metrics, not timed).

use anyedge_test_support::free_port;
use anyedge_test_support::process::Proc;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starting and reloading 10,000 apps takes seconds in a debug build on a busy machine.
const WAIT: Duration = Duration::from_secs(180);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_anyedge"))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `apps` apps on one HTTP port, each with `instances` instances whose ports start at `base`
/// (nothing listens there: no request is sent), except `moved` (app, instance), which is at
/// port 9.
fn catalog(
    port: u16,
    apps: usize,
    instances: usize,
    base: u16,
    moved: Option<(usize, usize)>,
) -> String {
    let mut out = String::from("[node]\nthreads = 1\ndrain_timeout = \"1s\"\n");
    for a in 0..apps {
        out.push_str(&format!(
            "[[apps]]\nname = \"a{a}\"\nhostnames = [\"a{a}.test\"]\n[[apps.services]]\ninternal_port = 8080\nports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
        ));
        for i in 0..instances {
            let p = if moved == Some((a, i)) {
                9
            } else {
                base + i as u16
            };
            out.push_str(&format!(
                "[[apps.instances]]\nid = \"i{i}\"\naddress = \"127.0.0.1:{p}\"\n"
            ));
        }
    }
    out
}

/// Replace the file the way config managers do: write a temporary file, rename it over.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// One admin request on a new connection: the body, and how long the answer took.
async fn admin_get(admin: SocketAddr, path: &str) -> Option<(String, Duration)> {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some((out, t0.elapsed()))
}

fn json_field(text: &str, field: &str) -> Option<u64> {
    let body = text.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v.get(field)?.as_u64()
}

async fn generation(admin: SocketAddr) -> Option<u64> {
    let (text, _) = admin_get(admin, "/healthz").await?;
    json_field(&text, "generation")
}

async fn wait_generation(admin: SocketAddr, want: u64) {
    anyedge_test_support::eventually(&format!("generation {want}"), WAIT, || async {
        generation(admin).await.filter(|g| *g >= want)
    })
    .await;
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

async fn built(admin: SocketAddr) -> (u64, u64) {
    let (text, _) = admin_get(admin, "/metrics").await.expect("metrics");
    (
        metric(&text, "anyedge_catalog_apps_built_total"),
        metric(&text, "anyedge_routes_http_services_built_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_within_50ms_while_a_10000_app_reload_runs() {
    const APPS: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("anyedge.toml");
    let (port, admin) = (free_port(), local(free_port()));
    write_config(&path, &catalog(port, APPS, 1, 20_000, None));
    let _node = Proc::anyedge_run(bin(), &path, admin, &dir.path().join("node.log"), None);
    wait_generation(admin, 1).await;
    // Every app's instance moves: every app is read, validated and built again.
    write_config(&path, &catalog(port, APPS, 1, 21_000, None));
    let deadline = Instant::now() + WAIT;
    let (mut during, mut times) = (0, Vec::new());
    loop {
        let (text, took) = admin_get(admin, "/healthz").await.expect("healthz answers");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // An answer held up by the reload arrives after it, with the new generation: it counts.
        times.push(took);
        if json_field(&text, "generation") == Some(2) {
            break;
        }
        during += 1;
        assert!(Instant::now() < deadline, "the reload never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The test means something only if the reload took a while: in a debug build, reading
    // and building 10,000 apps takes far longer than a few polls.
    assert!(
        during >= 5,
        "only {during} answers while the reload ran: too short to judge"
    );
    // Nine in ten within 50 ms, and none held up by the reload: the machine that runs the
    // tests is shared (2 cores, builds beside), so one answer in ten may wait for a core; a
    // reload on the control runtime holds them for seconds (7.7 s measured in a debug build).
    times.sort();
    let p90 = times[times.len() * 9 / 10];
    let worst = times[times.len() - 1];
    assert!(
        p90 < Duration::from_millis(50) && worst < Duration::from_millis(500),
        "/healthz while a 10,000-app reload ran: 90th percentile {p90:?}, slowest {worst:?} ({during} answers)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_one_app_builds_that_app_alone() {
    const APPS: usize = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("anyedge.toml");
    let (port, admin) = (free_port(), local(free_port()));
    write_config(&path, &catalog(port, APPS, 3, 20_000, None));
    let _node = Proc::anyedge_run(bin(), &path, admin, &dir.path().join("node.log"), None);
    wait_generation(admin, 1).await;
    assert_eq!(built(admin).await, (APPS as u64, APPS as u64), "at start");
    // One instance of one app moves.
    write_config(&path, &catalog(port, APPS, 3, 20_000, Some((417, 1))));
    wait_generation(admin, 2).await;
    assert_eq!(
        built(admin).await,
        (APPS as u64 + 1, APPS as u64 + 1),
        "one app's entry and routes built again, no other"
    );
    // A rewrite that changes no app (a comment) builds nothing.
    let same = catalog(port, APPS, 3, 20_000, Some((417, 1)));
    write_config(&path, &format!("# touched\n{same}"));
    wait_generation(admin, 3).await;
    assert_eq!(built(admin).await, (APPS as u64 + 1, APPS as u64 + 1));
}
