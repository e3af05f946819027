//! Admission end to end: an in-process node, scripted instances on loopback, real HTTP/1.1
//! clients. One app flooded far past its limits does not slow another app down; a request that
//! finds every slot taken waits in the app's queue, then gets its slot, or `queue_timeout`, or
//! `app_overloaded` when the queue is full; the app's own budget (`max_inflight`) queues the
//! same way; and every in-flight count returns to zero afterwards.

use anyedge::node::Node;
use anyedge_test_support::http_client::{empty, request, Client, ClientBody};
use anyedge_test_support::runtimes::Runtimes;
use anyedge_test_support::scripted_instance::{metric, ScriptedInstance};
use anyedge_test_support::{eventually, free_port};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An HTTP app on `port` (host `NAME.test`) with `extra` app keys and its instances.
fn app(name: &str, port: u16, extra: &str, instances: &[&ScriptedInstance]) -> String {
    let mut t = format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\n{extra}\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    for i in instances {
        t += &format!(
            "  [[apps.instances]]\n  id = \"{}\"\n  address = \"{}\"\n",
            i.name, i.addr
        );
    }
    t
}

async fn node(toml: &str) -> Node {
    let config = anyedge_config::parse(toml, "admission.toml").unwrap_or_else(|d| panic!("{d}"));
    Node::start(config, Some(local(0)))
        .await
        .expect("node starts")
}

/// One answer as the client saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `anyedge-error`, if any.
    code: Option<String>,
    retry_after: bool,
    instance: Option<String>,
    /// From sending the request to the end of the body.
    elapsed: Duration,
    /// When the body had been read.
    finished: Instant,
}

/// A client's HTTP/1.1 keep-alive connection to the node.
struct Conn {
    tx: hyper::client::conn::http1::SendRequest<ClientBody>,
    task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Conn {
    async fn open(port: u16) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(local(port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (tx, conn) = hyper::client::conn::http1::handshake::<_, ClientBody>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
        Ok(Conn {
            tx,
            task: tokio::spawn(conn),
        })
    }

    async fn get(&mut self, host: &str, path: &str) -> Result<Answer, String> {
        let req = request("GET", host, path, false)
            .body(empty())
            .expect("request");
        self.tx.ready().await.map_err(|e| format!("ready: {e}"))?;
        let started = Instant::now();
        let resp = self
            .tx
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Answer {
            status,
            code: text("anyedge-error"),
            retry_after: h.contains_key("retry-after"),
            instance: text("x-instance"),
            elapsed: started.elapsed(),
            finished: Instant::now(),
        })
    }

    async fn close(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// One request on a new connection, closed after the answer; `Err` when the connection failed.
async fn send(port: u16, host: &str, path: &str) -> Result<Answer, String> {
    let mut c = Conn::open(port).await?;
    let answer = c.get(host, path).await;
    c.close().await;
    answer
}

/// Admin `/metrics` (over HTTP, as an operator reads it).
async fn admin_metrics(node: &Node) -> String {
    let mut c = Client::h1(node.admin_addr()).await;
    c.get("admin", "/metrics").await.2
}

fn counter(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// `anyedge_queued_total` of `app`, read in-process (fast enough to poll in a tight loop).
fn queued(node: &Node, app: &str) -> f64 {
    counter(
        &node.metrics().render(),
        &format!("anyedge_queued_total{{app=\"{app}\"}}"),
    )
}

/// Wait (polling every 2 ms) until `app` has queued `n` requests in all.
async fn wait_queued(node: &Node, app: &str, n: f64) {
    let deadline = Instant::now() + DEADLINE;
    while queued(node, app) < n {
        assert!(
            Instant::now() < deadline,
            "{app}: {n} requests never queued"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        queued(node, app),
        n,
        "{app}: more requests queued than sent"
    );
}

/// Every instance's `anyedge_app_concurrency` on the admin `/metrics` returns to 0.
async fn counts_return_to_zero(node: &Node, series: &[(&str, &str)]) {
    eventually("in-flight counts return to zero", DEADLINE, || async {
        let m = admin_metrics(node).await;
        series
            .iter()
            .all(|(app, inst)| {
                counter(
                    &m,
                    &format!("anyedge_app_concurrency{{app=\"{app}\",instance=\"{inst}\"}}"),
                ) == 0.0
            })
            .then_some(())
    })
    .await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How long each of `a`'s requests keeps its instance busy: longer than `b`'s whole run, with
/// room to spare on a loaded machine.
const A_SLOW: &str = "/slow/4000";

/// One of `a`'s flooding clients: a keep-alive connection sending slow requests; after a 503 it
/// waits about as long as `Retry-After` says (jittered, like a fleet of real clients) and sends
/// again, until `stop`.
async fn flood_client(
    port: u16,
    n: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<Result<Answer, String>> {
    let mut out = Vec::new();
    let mut conn = match Conn::open(port).await {
        Ok(c) => c,
        Err(e) => return vec![Err(e)],
    };
    for round in 0.. {
        if *stop.borrow() {
            break;
        }
        let answer = conn.get("a.test", A_SLOW).await;
        answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let refused = matches!(&answer, Ok(a) if a.status == 503);
        let failed = answer.is_err();
        out.push(answer);
        if failed {
            break;
        }
        if refused {
            let pause = Duration::from_millis(500 + ((n * 7_919 + round * 104_729) % 1_000) as u64);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    }
    conn.close().await;
    out
}

/// App `a` gets 2,000 concurrent clients sending slow requests, against 2 × 50 instance slots,
/// a budget of 200 and a queue of 100; refused clients come back after about `Retry-After`.
/// While `a` is saturated (instances full, queue full, the rest refused), app `b` on the same
/// node and port answers every one of its requests, with p99 < 50 ms. Then every in-flight
/// count returns to zero.
///
/// The parts are kept apart as separate machines would be: the node serves on two shards of
/// its own (as `anyedge run` does), `a`'s clients and instances run on the test's runtime, and
/// `b`'s clients and instances on a third runtime, so `b`'s latency is the node's doing. `b`
/// is measured once `a`'s first 2,000 requests have all arrived: the connection storm of a
/// debug build saturates this machine's 2 cores for a moment whatever the apps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_app_does_not_slow_another_app_down() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const FLOOD: usize = 2_000;
    const HARD: usize = 50;
    const QUEUE: usize = 100;
    const B_CLIENTS: usize = 10;
    const B_EACH: usize = 30;
    // b's clients pause between requests: b's 300 requests take about 1.5 s, through the
    // return of a's refused clients.
    const B_PAUSE: Duration = Duration::from_millis(50);
    let shards = Runtimes::current_thread(2, "node-shard");
    let b_side = Runtimes::current_thread(1, "b-side");
    let a = [
        ScriptedInstance::start("a-1").await,
        ScriptedInstance::start("a-2").await,
    ];
    let b = [
        b_side
            .handle(0)
            .spawn(ScriptedInstance::start("b-1"))
            .await
            .expect("b-1"),
        b_side
            .handle(0)
            .spawn(ScriptedInstance::start("b-2"))
            .await
            .expect("b-2"),
    ];
    let port = free_port();
    let toml = format!(
        "[limits]\nmax_connections_per_ip = 5000\n\n{}{}",
        app(
            "a",
            port,
            "concurrency = { type = \"requests\", soft_limit = 40, hard_limit = 50 }\nlimits = { max_inflight = 200, queue = 100, queue_timeout = \"1s\", max_connections = 5000 }",
            &[&a[0], &a[1]]
        ),
        app(
            "b",
            port,
            "concurrency = { type = \"requests\", soft_limit = 20, hard_limit = 25 }",
            &[&b[0], &b[1]]
        ),
    );
    let config = anyedge_config::parse(&toml, "admission.toml").unwrap_or_else(|d| panic!("{d}"));
    let node = Node::start_on(config, Some(local(0)), shards.handles())
        .await
        .expect("node starts");

    // b's clients: keep-alive connections opened (and used once) before the flood.
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let b_load = b_side.handle(0).spawn(async move {
        let mut clients = Vec::new();
        for _ in 0..B_CLIENTS {
            let mut c = Conn::open(port).await.expect("b connects");
            let warm = c.get("b.test", "/").await.expect("b answers");
            assert_eq!(warm.status, 200);
            clients.push(c);
        }
        let _ = ready_tx.send(());
        let _ = go_rx.await;
        let loops: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for _ in 0..B_EACH {
                        out.push(c.get("b.test", "/").await);
                        tokio::time::sleep(B_PAUSE).await;
                    }
                    c.close().await;
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for l in loops {
            all.extend(l.await.expect("b client"));
        }
        all
    });
    ready.await.expect("b's clients connected");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let answered = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD)
        .map(|n| tokio::spawn(flood_client(port, n, stopped.clone(), answered.clone())))
        .collect();
    let a_full = || a.iter().map(ScriptedInstance::inflight).sum::<usize>() == 2 * HARD;
    // Every first request has arrived: all but those on an instance or in the queue answered.
    eventually(
        "a's first requests are all placed, queued or refused",
        DEADLINE,
        || async {
            (a_full() && answered.load(Ordering::SeqCst) >= FLOOD - 2 * HARD - QUEUE).then_some(())
        },
    )
    .await;

    // b, while a is saturated and its clients keep coming back.
    let b_started = Instant::now();
    go.send(()).expect("b's load");
    let b_answers = b_load.await.expect("b's load");
    let b_took = b_started.elapsed();
    assert!(
        a_full(),
        "b's requests ({b_took:?}) ran while a was saturated"
    );
    let _ = stop.send(true);

    let mut b_latencies = Vec::new();
    for answer in b_answers {
        let answer = answer.expect("b's client gets an answer");
        assert_eq!(
            (answer.status, answer.code.as_deref()),
            (200, None),
            "{answer:?}"
        );
        assert!(answer.instance.is_some_and(|i| i.starts_with("b-")));
        b_latencies.push(answer.elapsed);
    }
    assert_eq!(b_latencies.len(), B_CLIENTS * B_EACH);
    b_latencies.sort();
    let p99 = percentile(&b_latencies, 0.99);
    let p50 = percentile(&b_latencies, 0.50);
    assert!(
        p99 < Duration::from_millis(50),
        "b's p99 {p99:?} (p50 {p50:?}, max {:?}) while a is flooded",
        b_latencies.last()
    );
    assert_eq!(
        b.iter().map(ScriptedInstance::answered).sum::<usize>(),
        B_CLIENTS * (B_EACH + 1)
    );

    let (mut ok, mut overloaded, mut timed_out) = (0, 0, Vec::new());
    let mut during_b = 0;
    for f in flood {
        for answer in f.await.expect("flood client") {
            let answer = answer.expect("a's client gets an answer");
            if answer.finished > b_started && answer.finished < b_started + b_took {
                during_b += 1;
            }
            match (answer.status, answer.code.as_deref()) {
                (200, None) => {
                    assert!(answer.instance.is_some_and(|i| i.starts_with("a-")));
                    ok += 1;
                }
                (503, Some("app_overloaded")) => {
                    assert!(answer.retry_after, "{answer:?}");
                    overloaded += 1;
                }
                (503, Some("queue_timeout")) => {
                    assert!(answer.retry_after, "{answer:?}");
                    timed_out.push(answer.elapsed);
                }
                _ => panic!("a answered {answer:?}"),
            }
        }
    }
    eprintln!(
        "a: {ok} ok, {overloaded} app_overloaded, {} queue_timeout, {during_b} while b ran; b: p50 {p50:?} p99 {p99:?} in {b_took:?}",
        timed_out.len()
    );
    assert!(
        during_b >= FLOOD / 2,
        "a's clients kept coming while b ran: {during_b} answers"
    );
    // Every instance slot was used, none beyond the hard limit.
    for i in &a {
        assert_eq!(i.max_inflight(), HARD, "{} at most its hard limit", i.name);
    }
    assert_eq!(ok, a.iter().map(ScriptedInstance::answered).sum::<usize>());
    assert!(ok >= 2 * HARD, "{ok} served");
    // Most were refused at once; the queue filled, and its waiters gave up after its timeout.
    assert!(overloaded >= FLOOD, "{overloaded} overloaded");
    assert!(!timed_out.is_empty(), "some waited in the queue");
    assert!(
        timed_out.iter().all(|t| *t >= Duration::from_secs(1)),
        "{timed_out:?}"
    );

    let m = admin_metrics(&node).await;
    assert_eq!(
        counter(
            &m,
            "anyedge_errors_total{app=\"a\",code=\"app_overloaded\"}"
        ),
        overloaded as f64
    );
    assert_eq!(
        counter(&m, "anyedge_errors_total{app=\"a\",code=\"queue_timeout\"}"),
        timed_out.len() as f64
    );
    assert!(counter(&m, "anyedge_queued_total{app=\"a\"}") >= timed_out.len() as f64);
    assert!(
        !m.lines()
            .any(|l| l.starts_with("anyedge_errors_total{app=\"b\"") && !l.ends_with(" 0")),
        "b had no errors:\n{m}"
    );
    counts_return_to_zero(
        &node,
        &[("a", "a-1"), ("a", "a-2"), ("b", "b-1"), ("b", "b-2")],
    )
    .await;
    node.shutdown(Duration::from_secs(2)).await;
    drop(node);
    drop(b);
    drop(b_side);
    drop(shards);
}

/// One instance, hard limit 2, queue 10, queue timeout 300 ms. A third request waits for a slot
/// and gets it when one is released; with no release it gets 503 `queue_timeout` after the
/// timeout, never reaching the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_gets_the_next_free_slot_or_times_out() {
    let inst = ScriptedInstance::start("q-1").await;
    let port = free_port();
    let node = node(&app(
        "q",
        port,
        "concurrency = { type = \"requests\", soft_limit = 1, hard_limit = 2 }\nlimits = { max_inflight = 100, queue = 10, queue_timeout = \"300ms\" }",
        &[&inst],
    ))
    .await;
    let holds: Vec<_> = (0..2)
        .map(|_| tokio::spawn(send(port, "q.test", "/hold")))
        .collect();
    eventually("both slots held", DEADLINE, || async {
        (inst.held() == 2).then_some(())
    })
    .await;

    // A third waits in the queue: it does not reach the instance while both slots are held.
    let third = tokio::spawn(send(port, "q.test", "/"));
    wait_queued(&node, "q", 1.0).await;
    // Waiting: not answered, and not at the instance, while both slots stay held.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!third.is_finished(), "the third waits");
    assert_eq!(inst.requests(), 2, "the third is not at the instance yet");
    let released = Instant::now();
    inst.release(1);
    let third = third.await.expect("task").expect("answer");
    assert_eq!(
        (third.status, third.code.as_deref()),
        (200, None),
        "{third:?}"
    );
    assert_eq!(third.instance.as_deref(), Some("q-1"));
    assert!(
        third.finished > released && third.elapsed >= third.finished - released,
        "answered once a slot was released: {third:?}"
    );
    assert_eq!(inst.requests(), 3);
    assert_eq!(inst.max_inflight(), 2, "never over the hard limit");

    // Both slots held again and nobody lets go: 503 after the queue timeout.
    let more = tokio::spawn(send(port, "q.test", "/hold"));
    eventually("both slots held again", DEADLINE, || async {
        (inst.held() == 2).then_some(())
    })
    .await;
    let late = send(port, "q.test", "/").await.expect("answer");
    assert_eq!(late.status, 503, "{late:?}");
    assert_eq!(late.code.as_deref(), Some("queue_timeout"));
    assert!(late.retry_after, "Retry-After on a queue timeout");
    assert!(late.elapsed >= Duration::from_millis(300), "{late:?}");
    assert!(late.elapsed < Duration::from_secs(5), "{late:?}");
    assert_eq!(
        inst.requests(),
        4,
        "the timed-out one never reached the instance"
    );
    assert_eq!(queued(&node, "q"), 2.0);

    inst.release(2);
    for h in holds.into_iter().chain([more]) {
        let a = h.await.expect("task").expect("answer");
        assert_eq!(a.status, 200, "{a:?}");
    }
    let m = admin_metrics(&node).await;
    assert_eq!(
        counter(&m, "anyedge_errors_total{app=\"q\",code=\"queue_timeout\"}"),
        1.0
    );
    counts_return_to_zero(&node, &[("q", "q-1")]).await;
    node.shutdown(Duration::from_secs(2)).await;
}

/// With both slots held and the queue's 10 places taken, the next request is refused at once
/// with 503 `app_overloaded` while the 10 go on waiting; when the slots free, all 10 are served,
/// never more than 2 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_its_waiters_are_served_in_turn() {
    let inst = ScriptedInstance::start("f-1").await;
    let port = free_port();
    let node = node(&app(
        "f",
        port,
        "concurrency = { type = \"requests\", soft_limit = 1, hard_limit = 2 }\nlimits = { max_inflight = 100, queue = 10, queue_timeout = \"20s\" }",
        &[&inst],
    ))
    .await;
    let holds: Vec<_> = (0..2)
        .map(|_| tokio::spawn(send(port, "f.test", "/hold")))
        .collect();
    eventually("both slots held", DEADLINE, || async {
        (inst.held() == 2).then_some(())
    })
    .await;
    let waiters: Vec<_> = (0..10)
        .map(|_| tokio::spawn(send(port, "f.test", "/")))
        .collect();
    wait_queued(&node, "f", 10.0).await;

    let refused = send(port, "f.test", "/").await.expect("answer");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.code.as_deref(), Some("app_overloaded"));
    assert!(refused.retry_after);
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "refused while the 10 still wait"
    );
    assert_eq!(queued(&node, "f"), 10.0, "the refused one never queued");
    assert_eq!(inst.requests(), 2);

    inst.release(2);
    for w in holds.into_iter().chain(waiters) {
        let a = w.await.expect("task").expect("answer");
        assert_eq!(
            (a.status, a.instance.as_deref()),
            (200, Some("f-1")),
            "{a:?}"
        );
    }
    assert_eq!(inst.requests(), 12);
    assert_eq!(inst.max_inflight(), 2, "never over the hard limit");
    let m = admin_metrics(&node).await;
    assert_eq!(
        counter(
            &m,
            "anyedge_errors_total{app=\"f\",code=\"app_overloaded\"}"
        ),
        1.0
    );
    counts_return_to_zero(&node, &[("f", "f-1")]).await;
    node.shutdown(Duration::from_secs(2)).await;
}

/// The app's budget on this node (`max_inflight` 2, queue 1) queues and refuses the same way,
/// although its instances have room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_budget_queues_then_refuses() {
    let insts = [
        ScriptedInstance::start("m-1").await,
        ScriptedInstance::start("m-2").await,
    ];
    let port = free_port();
    let node = node(&app(
        "m",
        port,
        "concurrency = { type = \"requests\", soft_limit = 20, hard_limit = 25 }\nlimits = { max_inflight = 2, queue = 1, queue_timeout = \"20s\" }",
        &[&insts[0], &insts[1]],
    ))
    .await;
    let held = || insts.iter().map(ScriptedInstance::held).sum::<usize>();
    let requests = || insts.iter().map(ScriptedInstance::requests).sum::<usize>();
    let holds: Vec<_> = (0..2)
        .map(|_| tokio::spawn(send(port, "m.test", "/hold")))
        .collect();
    eventually("the budget is used", DEADLINE, || async {
        (held() == 2).then_some(())
    })
    .await;
    let third = tokio::spawn(send(port, "m.test", "/"));
    wait_queued(&node, "m", 1.0).await;
    let refused = send(port, "m.test", "/").await.expect("answer");
    assert_eq!(
        (refused.status, refused.code.as_deref()),
        (503, Some("app_overloaded")),
        "{refused:?}"
    );
    assert!(!third.is_finished());
    assert_eq!(requests(), 2, "instances had room, but the budget did not");
    for i in &insts {
        i.release(2);
    }
    let third = third.await.expect("task").expect("answer");
    assert_eq!(third.status, 200, "{third:?}");
    for h in holds {
        assert_eq!(h.await.expect("task").expect("answer").status, 200);
    }
    counts_return_to_zero(&node, &[("m", "m-1"), ("m", "m-2")]).await;
    node.shutdown(Duration::from_secs(2)).await;
}
