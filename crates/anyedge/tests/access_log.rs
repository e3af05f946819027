//! The access log through the real binary: one line per request, written in batches off the
//! request path (within a second while the node runs, and whatever is left when it stops),
//! as text or JSON.

use anyedge_test_support::http_client::Client;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::process::Proc;
use anyedge_test_support::{eventually, free_port};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn access_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("anyedge::access"))
        .map(str::to_string)
        .collect()
}

/// A node with one HTTP app on `port`, logging to `dir/node.log` in `format`.
fn start(dir: &Path, port: u16, instance: SocketAddr, format: &str) -> (Proc, SocketAddr) {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndrain_timeout = \"1s\"\n[[apps]]\nname = \"web\"\nhostnames = [\"web.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"web-1\"\n  address = \"{instance}\"\n"
        ),
    )
    .expect("write config");
    let admin = local(free_port());
    let bin = Path::new(env!("CARGO_BIN_EXE_anyedge"));
    let log = dir.join("node.log");
    let config = config.to_str().expect("utf-8");
    let admin_arg = admin.to_string();
    let args = [
        "--log-format",
        format,
        "run",
        "--config",
        config,
        "--admin-listen",
        &admin_arg,
    ];
    (Proc::spawn(bin, &args, &log), admin)
}

async fn serve_three(port: u16) {
    let mut client = eventually("the node serves", WAIT, || async {
        let stream = tokio::net::TcpStream::connect(local(port)).await.ok()?;
        Some(Client::over(stream, false).await)
    })
    .await;
    for path in ["/a", "/b", "/c"] {
        assert_eq!(client.get("web.test", path).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_line_within_a_second_and_the_rest_at_stop() {
    let inst = HttpInstance::start("web-1", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (mut proc, _admin) = start(dir.path(), port, inst.addr, "text");
    let log = dir.path().join("node.log");
    serve_three(port).await;
    // Written by the access log's own thread within FLUSH_EVERY, not by the requests.
    let lines = eventually("three access lines", WAIT, || async {
        let lines = access_lines(&log);
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert!(
            l.contains("app=web instance=web-1 status=200 code= fault= attempts=1"),
            "{l}"
        );
    }
    // A request answered just before the stop is in the log after it.
    let mut client = Client::over(
        tokio::net::TcpStream::connect(local(port))
            .await
            .expect("connect"),
        false,
    )
    .await;
    assert_eq!(client.get("nobody.test", "/").await.0, 404);
    drop(client);
    proc.signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + WAIT;
    while proc.try_exit_code().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing is lost at stop: every line is out once the process has exited.
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[3].contains("status=404 code=unknown_host fault=client"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_and_carry_the_request_id() {
    let inst = HttpInstance::start("web-1", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (proc, _admin) = start(dir.path(), port, inst.addr, "json");
    let log = dir.path().join("node.log");
    serve_three(port).await;
    let lines = eventually("three JSON lines", WAIT, || async {
        let lines = access_lines(&log);
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON object per line");
        assert_eq!(v["target"], "anyedge::access");
        assert_eq!(v["app"], "web");
        assert_eq!(v["status"], 200);
        assert!(
            v["request_id"].as_str().is_some_and(|r| r.len() > 20),
            "{l}"
        );
        assert!(v["total_ms"].as_f64().is_some(), "{l}");
    }
    proc.signal(libc::SIGTERM);
}
