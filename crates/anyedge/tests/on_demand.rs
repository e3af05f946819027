//! System tests of instances started on demand (`docs/on-demand.md`): an in-process node whose
//! instances are real processes started and stopped by the `command` driver (this test binary
//! run again as a small HTTP server that listens only after a delay: `wake::instance_process`), and
//! by the `http` driver against a fake machines API.

mod wake;

use anyedge::node::Node;
use anyedge_test_support::http_client::Client;
use anyedge_test_support::{eventually, free_port};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wake::{burst, local, Proc};

const DEADLINE: Duration = Duration::from_secs(20);

fn app(port: u16, keys: &str, instances: &[(&str, u16, String)]) -> String {
    let mut t = format!(
        "[[apps]]\nname = \"sleepy\"\nhostnames = [\"sleepy.test\"]\nconcurrency = {{ type = \"requests\", soft_limit = 20, hard_limit = 25 }}\nlimits = {{ queue = 512, queue_timeout = \"5s\" }}\n{keys}\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    for (id, p, driver) in instances {
        t += &format!(
            "  [[apps.instances]]\n  id = \"{id}\"\n  address = \"127.0.0.1:{p}\"\n  {driver}\n"
        );
    }
    t
}

async fn node(toml: &str) -> Node {
    let config = anyedge_config::parse(toml, "on_demand.toml").unwrap_or_else(|d| panic!("{d}"));
    Node::start(config, Some(local(0)))
        .await
        .expect("node starts")
}

async fn state_is(node: &Node, id: &str, want: &str) {
    eventually(&format!("{id} {want}"), DEADLINE, || async {
        (node.instance_state("sleepy", id) == Some(want)).then_some(())
    })
    .await;
}

async fn metrics(node: &Node) -> String {
    let mut c = Client::h1(node.admin_addr()).await;
    c.get("admin", "/metrics").await.2
}

fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_wake_a_stopped_instance_with_one_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc {
        id: "sleepy-1",
        port: free_port(),
        delay_ms: 1500,
        dir: dir.path(),
    };
    let port = free_port();
    let toml = app(
        port,
        "start_timeout = \"10s\"",
        &[(p.id, p.port, p.driver())],
    );
    let node = node(&toml).await;
    assert_eq!(node.driver_tasks(), 1);
    state_is(&node, p.id, "stopped").await;

    let began = Instant::now();
    let results = burst(port, 200).await;
    let wall = began.elapsed();
    let bad: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    p.kill();
    assert!(
        bad.is_empty(),
        "{} of 200 failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(p.count("starts"), 1, "exactly one start");
    assert_eq!(node.instance_state("sleepy", p.id), Some("running"));
    let text = metrics(&node).await;
    assert_eq!(
        series(
            &text,
            "anyedge_instance_starts_total{app=\"sleepy\",result=\"ok\"}"
        ),
        1
    );
    assert_eq!(
        series(
            &text,
            "anyedge_requests_waited_for_start_total{app=\"sleepy\"}"
        ),
        200
    );
    // The added latency: the first answer against the moment the instance listened.
    let ready_ms: u128 = std::fs::read_to_string(dir.path().join("sleepy-1.ready"))
        .expect("ready file")
        .trim()
        .parse()
        .expect("ms");
    let first = results.iter().map(|r| r.3).min().unwrap_or_default();
    let slowest = results.iter().map(|r| r.2).max().unwrap_or_default();
    eprintln!(
        "200 requests in {wall:?} (slowest {slowest:?}); first answer {} ms after the instance listened",
        first as i128 - ready_ms as i128
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_answers_503_and_the_next_stopped_instance_is_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = Proc {
        id: "sleepy-2",
        port: free_port(),
        delay_ms: 200,
        dir: dir.path(),
    };
    let port = free_port();
    let failing = "driver = { type = \"command\", start = \"echo no machine today >&2; exit 3\", stop = \"true\" }".to_string();
    let toml = app(
        port,
        "start_timeout = \"2s\"",
        &[
            ("sleepy-1", free_port(), failing),
            (good.id, good.port, good.driver()),
        ],
    );
    let node = node(&toml).await;
    state_is(&node, "sleepy-1", "stopped").await;
    state_is(&node, good.id, "stopped").await;
    // The operator's status shows the state.
    let mut c = Client::h1(node.admin_addr()).await;
    let status = c.get("admin", "/v1/status").await.2;
    assert!(status.contains("\"state\":\"stopped\""), "{status}");

    // Those that waited for the failed start get the distinct 503 at once; any arriving after
    // it join the next instance's start and are served.
    let results = burst(port, 20).await;
    for (status, code, took, _) in &results {
        match status {
            503 => assert_eq!(code, "instance_start_failed"),
            200 => {}
            other => panic!("{other} {code}"),
        }
        assert!(*took < Duration::from_millis(2000 + 1000), "{took:?}");
    }
    assert!(results.iter().any(|r| r.0 == 503), "{results:?}");
    assert_eq!(node.instance_state("sleepy", "sleepy-1"), Some("failed"));
    // The next stopped instance was started for the requests to come.
    state_is(&node, good.id, "running").await;
    let results = burst(port, 5).await;
    good.kill();
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
    assert_eq!(good.count("starts"), 1);
    let text = metrics(&node).await;
    assert_eq!(
        series(
            &text,
            "anyedge_instance_starts_total{app=\"sleepy\",result=\"failed\"}"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_past_start_timeout_answers_503_and_the_next_is_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = Proc {
        id: "sleepy-1",
        port: free_port(),
        delay_ms: 60_000,
        dir: dir.path(),
    };
    let good = Proc {
        id: "sleepy-2",
        port: free_port(),
        delay_ms: 0,
        dir: dir.path(),
    };
    let port = free_port();
    let toml = app(
        port,
        "start_timeout = \"1s\"",
        &[
            (slow.id, slow.port, slow.driver()),
            (good.id, good.port, good.driver()),
        ],
    );
    let node = node(&toml).await;
    state_is(&node, slow.id, "stopped").await;
    state_is(&node, good.id, "stopped").await;

    let results = burst(port, 20).await;
    for (status, code, took, _) in &results {
        assert_eq!((*status, code.as_str()), (503, "instance_start_failed"));
        assert!(*took >= Duration::from_millis(900), "{took:?}");
        assert!(*took < Duration::from_millis(1000 + 700), "{took:?}");
    }
    assert_eq!(node.instance_state("sleepy", slow.id), Some("failed"));
    eventually("the start given up is stopped", DEADLINE, || async {
        (slow.count("stops") == 1).then_some(())
    })
    .await;
    state_is(&node, good.id, "running").await;
    let results = burst(port, 5).await;
    slow.kill();
    good.kill();
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
    let text = metrics(&node).await;
    assert_eq!(
        series(
            &text,
            "anyedge_instance_starts_total{app=\"sleepy\",result=\"timeout\"}"
        ),
        1
    );
}

/// A GET of `path`, forced to `instance` when given: (status, the instance that answered).
async fn get(port: u16, path: &str, instance: Option<&str>) -> (u16, String) {
    let mut c = Client::h1(local(port)).await;
    let mut req = anyedge_test_support::http_client::request("GET", "sleepy.test", path, false);
    if let Some(i) = instance {
        req = req.header("anyedge-force-instance-id", i);
    }
    let resp = c
        .send(
            req.body(anyedge_test_support::http_client::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let who = resp
        .headers()
        .get("x-instance")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, who)
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn running(node: &Node, ids: &[&str]) -> usize {
    ids.iter()
        .filter(|id| node.instance_state("sleepy", id) == Some("running"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_stop_down_to_min_running_and_load_starts_them_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let procs = [
        Proc {
            id: "sleepy-1",
            port: free_port(),
            delay_ms: 0,
            dir: dir.path(),
        },
        Proc {
            id: "sleepy-2",
            port: free_port(),
            delay_ms: 0,
            dir: dir.path(),
        },
    ];
    let ids = ["sleepy-1", "sleepy-2"];
    let port = free_port();
    let toml = app(
        port,
        "auto_stop = \"stop\"\nstop_after = \"1s\"\nmin_running = 1\nstart_timeout = \"5s\"",
        &procs
            .iter()
            .map(|p| (p.id, p.port, p.driver()))
            .collect::<Vec<_>>(),
    )
    .replace("soft_limit = 20", "soft_limit = 1");
    let node = node(&toml).await;
    for id in ids {
        state_is(&node, id, "stopped").await;
    }
    for id in ids {
        assert_eq!(get(port, "/", Some(id)).await, (200, id.to_string()));
    }
    assert_eq!(running(&node, &ids), 2);

    // A request in flight on sleepy-1 for 1.5 s, past stop_after: sleepy-1 is not idle, and
    // sleepy-2 may not stop either while sleepy-1 is at its soft limit (1 of 1).
    let slow = tokio::spawn(async move { get(port, "/slow", Some("sleepy-1")).await });
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(running(&node, &ids), 2, "nothing stops under load");
    assert_eq!(slow.await.expect("slow"), (200, "sleepy-1".to_string()));

    // Both idle now: one stops after stop_after, the other stays (min_running = 1).
    // (Running drops to one when the stop begins: the instance is `stopping` until drained.)
    let stopped = eventually("one instance stopped", DEADLINE, || async {
        let stopped = ids
            .iter()
            .find(|id| node.instance_state("sleepy", id) == Some("stopped"));
        (running(&node, &ids) == 1)
            .then_some(())
            .and(stopped.copied())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(running(&node, &ids), 1, "never below min_running");
    let text = metrics(&node).await;
    assert_eq!(
        series(&text, "anyedge_instance_stops_total{app=\"sleepy\"}"),
        1
    );

    // Load returns: two slow requests at once put the running instance over its soft limit,
    // so the stopped one is started again; every request is answered.
    let load: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(port, "/slow", None).await }))
        .collect();
    state_is(&node, stopped, "running").await;
    for l in load {
        assert_eq!(l.await.expect("load").0, 200);
    }
    for p in &procs {
        p.kill();
    }
    let p = procs.iter().find(|p| p.id == stopped).expect("proc");
    assert_eq!(p.count("starts"), 2, "{stopped} started again");
    assert_eq!(p.count("stops"), 1);
}

/// A fake machines API: `POST /v1/machines/<id>/start` launches the instance process for
/// `<id>` (or answers 500 for ids in `broken`), `.../stop` kills it. Every call is recorded
/// as `(path, body)`.
struct MachinesApi {
    addr: SocketAddr,
    calls: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    children: std::sync::Arc<std::sync::Mutex<Vec<std::process::Child>>>,
}

impl MachinesApi {
    async fn start(machines: Vec<(&'static str, u16)>, broken: &'static [&'static str]) -> Self {
        let listener = tokio::net::TcpListener::bind(local(0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let children =
            std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::process::Child>::new()));
        let (c, k) = (calls.clone(), children.clone());
        tokio::spawn(async move {
            let dir = tempfile::tempdir().expect("tempdir");
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break 0,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                c.lock().expect("calls").push((path.clone(), body));
                let id = path
                    .trim_start_matches("/v1/machines/")
                    .split('/')
                    .next()
                    .unwrap_or("");
                let status = match (
                    path.ends_with("/start"),
                    machines.iter().find(|m| m.0 == id),
                ) {
                    _ if broken.contains(&id) => "500 Internal Server Error",
                    (true, Some((id, port))) => {
                        let child =
                            std::process::Command::new(std::env::current_exe().expect("exe"))
                                .args([
                                    "--exact",
                                    "wake::instance_process",
                                    "--ignored",
                                    "--nocapture",
                                ])
                                .env("ANYEDGE_TEST_INSTANCE", id)
                                .env("ANYEDGE_TEST_PORT", port.to_string())
                                .env("ANYEDGE_TEST_DELAY_MS", "300")
                                .env("ANYEDGE_TEST_READY_FILE", dir.path().join(id))
                                .stdout(std::process::Stdio::null())
                                .stderr(std::process::Stdio::null())
                                .spawn()
                                .expect("spawn");
                        k.lock().expect("children").push(child);
                        "200 OK"
                    }
                    (false, Some(_)) => {
                        for mut child in k.lock().expect("children").drain(..) {
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                        "200 OK"
                    }
                    (_, None) => "404 Not Found",
                };
                let answer = "{\"state\":\"accepted\"}";
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        MachinesApi {
            addr,
            calls,
            children,
        }
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().expect("calls").clone()
    }

    fn driver(&self, id: &str) -> String {
        format!(
            "driver = {{ type = \"http\", url = \"http://{}/v1/machines/{id}\" }}",
            self.addr
        )
    }
}

impl Drop for MachinesApi {
    fn drop(&mut self) {
        for mut child in self.children.lock().expect("children").drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_driver_starts_and_stops_machines_through_the_api() {
    let (p1, p2) = (free_port(), free_port());
    let api = MachinesApi::start(vec![("m1", p1), ("m2", p2)], &["m1"]).await;
    let port = free_port();
    let toml = app(
        port,
        &format!(
            "auto_stop = \"stop\"\nstop_after = \"1s\"\nstart_timeout = \"5s\"\ntokens_sha256 = [\"{}\"]",
            sha256_hex("t0k")
        ),
        &[("m1", p1, api.driver("m1")), ("m2", p2, api.driver("m2"))],
    );
    let node = node(&toml).await;
    state_is(&node, "m1", "stopped").await;
    state_is(&node, "m2", "stopped").await;

    // m1's API answers 500: the waiting request gets the distinct 503, m2 is started next.
    let results = burst(port, 1).await;
    assert_eq!(
        (results[0].0, results[0].1.as_str()),
        (503, "instance_start_failed")
    );
    assert!(
        results[0].2 < Duration::from_secs(1),
        "the API's 500 fails the start at once: {:?}",
        results[0].2
    );
    state_is(&node, "m1", "failed").await;
    state_is(&node, "m2", "running").await;
    assert_eq!(get(port, "/", None).await, (200, "m2".to_string()));
    let calls = api.calls();
    assert_eq!(calls[0].0, "/v1/machines/m1/start");
    assert_eq!(
        calls[0].1,
        format!("{{\"app\":\"sleepy\",\"instance\":\"m1\",\"address\":\"127.0.0.1:{p1}\"}}")
    );
    assert!(
        calls.iter().any(|c| c.0 == "/v1/machines/m2/start"),
        "{calls:?}"
    );

    // Idle for stop_after: m2 is stopped through the API (min_running 0).
    state_is(&node, "m2", "stopped").await;
    assert!(api.calls().iter().any(|c| c.0 == "/v1/machines/m2/stop"));
    // And started again by the next request, whose route trace says it waited.
    let mut c = Client::h1(local(port)).await;
    let req = anyedge_test_support::http_client::request("GET", "sleepy.test", "/", false)
        .header("anyedge-debug", "route")
        .header("anyedge-debug-token", "t0k")
        .body(anyedge_test_support::http_client::empty())
        .expect("request");
    let resp = c.send(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let route = resp.headers()["anyedge-route"]
        .to_str()
        .expect("text")
        .to_string();
    assert!(route.starts_with("chosen=m2;"), "{route}");
    assert!(route.contains("; waited_for_start=m2 "), "{route}");
    let starts = api
        .calls()
        .iter()
        .filter(|c| c.0 == "/v1/machines/m2/start")
        .count();
    assert_eq!(starts, 2);
}
