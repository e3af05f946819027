//! System tests of instances started on demand (`docs/on-demand.md`): an in-process node whose
//! instances are real processes started and stopped by the `command` driver (this test binary
//! run again as a small HTTP server that listens only after a delay: `instance_process`), and
//! by the `http` driver against a fake machines API.

use anyedge::node::Node;
use anyedge_test_support::http_client::Client;
use anyedge_test_support::{eventually, free_port};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(20);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One instance process's settings, passed on its command line's environment.
struct Proc<'a> {
    id: &'a str,
    port: u16,
    delay_ms: u64,
    dir: &'a Path,
}

impl Proc<'_> {
    fn pid_file(&self) -> PathBuf {
        self.dir.join(format!("{}.pid", self.id))
    }

    /// The shell line that launches it in the background and returns (its pid in a file,
    /// each start counted in another).
    fn start_line(&self) -> String {
        let exe = std::env::current_exe().expect("test binary");
        format!(
            "echo start >> {dir}/{id}.starts; echo \"launching $ANYEDGE_INSTANCE of $ANYEDGE_APP at $ANYEDGE_ADDRESS\"; ANYEDGE_TEST_INSTANCE={id} ANYEDGE_TEST_PORT={port} ANYEDGE_TEST_DELAY_MS={delay} ANYEDGE_TEST_READY_FILE={dir}/{id}.ready {exe} --exact instance_process --ignored --nocapture >/dev/null 2>&1 & echo $! > {pid}",
            dir = self.dir.display(),
            id = self.id,
            port = self.port,
            delay = self.delay_ms,
            exe = exe.display(),
            pid = self.pid_file().display(),
        )
    }

    fn stop_line(&self) -> String {
        format!(
            "echo stop >> {dir}/{id}.stops; kill $(cat {pid})",
            dir = self.dir.display(),
            id = self.id,
            pid = self.pid_file().display()
        )
    }

    fn driver(&self) -> String {
        format!(
            "driver = {{ type = \"command\", start = {:?}, stop = {:?} }}",
            self.start_line(),
            self.stop_line()
        )
    }

    fn count(&self, what: &str) -> usize {
        std::fs::read_to_string(self.dir.join(format!("{}.{what}", self.id)))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Stop the process by its pid, if it runs.
    fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: a plain kill(2) of the pid this test's start command recorded.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The instance process: waits `ANYEDGE_TEST_DELAY_MS`, then listens on `ANYEDGE_TEST_PORT`
/// and answers every HTTP/1.1 request 200 with its id (`GET /slow` after 1.5 s); writes the time it started listening
/// (ms since the epoch) to `ANYEDGE_TEST_READY_FILE`. Exits by itself after 120 s should
/// nobody stop it.
#[test]
#[ignore = "not a test: the instance process the on-demand tests' start commands run"]
fn instance_process() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let id = var("ANYEDGE_TEST_INSTANCE");
    let port: u16 = var("ANYEDGE_TEST_PORT").parse().expect("port");
    let delay: u64 = var("ANYEDGE_TEST_DELAY_MS").parse().expect("delay");
    let ready = var("ANYEDGE_TEST_READY_FILE");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let listener = tokio::net::TcpListener::bind(local(port))
            .await
            .expect("bind");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        std::fs::write(&ready, now.to_string()).expect("ready file");
        let serve = async {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let id = id.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                        if buf.starts_with(b"GET /slow ") {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        buf.drain(..end);
                        let body = format!("hello from {id}\n");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-instance: {id}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(120), serve).await;
    });
}

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

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// `n` concurrent GETs, each on its own connection: (status, error code, elapsed, ms since the
/// epoch at the answer) of each. Every 503 must carry `Retry-After`.
async fn burst(port: u16, n: usize) -> Vec<(u16, String, Duration, u128)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let t = Instant::now();
                let mut c = Client::h1(local(port)).await;
                let (status, headers, _) = c.get("sleepy.test", "/").await;
                let code = headers
                    .get("anyedge-error")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if status == 503 {
                    assert!(
                        headers.contains_key("retry-after"),
                        "{code}: no Retry-After"
                    );
                }
                (status, code, t.elapsed(), epoch_ms())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
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
    eventually("one instance stopped", DEADLINE, || async {
        (running(&node, &ids) == 1).then_some(())
    })
    .await;
    let stopped = *ids
        .iter()
        .find(|id| node.instance_state("sleepy", id) == Some("stopped"))
        .expect("a stopped instance");
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
