//! Placement end to end: an in-process node in region `ord`, scripted instances on loopback in
//! `ord` and `syd` (distance from configured coordinates), real HTTP/1.1 clients. Nearest
//! region first and spill-over at the hard limit, the `anyedge-route` trace behind a token,
//! the force/prefer request headers each way, and an instance killed under a client loop.

mod fleet;

use anyedge::node::Node;
use anyedge_test_support::http_client::{empty, request, Client};
use anyedge_test_support::scripted_instance::ScriptedInstance;
use anyedge_test_support::{eventually, free_port};
use fleet::{counter, local, Answer, NODE};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "route-secret";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An HTTP app (host `NAME.test`) whose owners' token is [`TOKEN`], with instances and regions.
/// An app of the fleet whose owners' token is `TOKEN`.
fn app(name: &str, port: u16, extra: &str, instances: &[(&ScriptedInstance, &str)]) -> String {
    let extra = format!("tokens_sha256 = [\"{}\"]\n{extra}", sha256_hex(TOKEN));
    fleet::app(name, port, &extra, instances)
}

async fn node(toml: &str) -> Node {
    let config = anyedge_config::parse(toml, "placement.toml").unwrap_or_else(|d| panic!("{d}"));
    Node::start(config, Some(local(0)))
        .await
        .expect("node starts")
}

/// GET `path` on `host` with extra request headers.
async fn get(c: &mut Client, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = request("GET", host, path, c.is_h2());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .send(req.body(empty()).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn admin_metrics(node: &Node) -> String {
    let mut c = Client::h1(node.admin_addr()).await;
    c.get("admin", "/metrics").await.2
}

async fn counts_return_to_zero(node: &Node, app: &str, instances: &[&ScriptedInstance]) {
    eventually("in-flight counts return to zero", DEADLINE, || async {
        let m = admin_metrics(node).await;
        instances
            .iter()
            .all(|i| {
                counter(
                    &m,
                    &format!(
                        "anyedge_app_concurrency{{app=\"{app}\",instance=\"{}\"}}",
                        i.name
                    ),
                ) == 0.0
            })
            .then_some(())
    })
    .await;
}

/// No header meant for the proxy reached any of these instances.
fn no_routing_headers_reached(instances: &[&ScriptedInstance]) {
    for i in instances {
        for seen in i.seen() {
            for name in seen.headers.keys() {
                let n = name.as_str();
                assert!(
                    !(n.starts_with("anyedge-prefer")
                        || n.starts_with("anyedge-force")
                        || n.starts_with("anyedge-debug")),
                    "{n} reached {} on {} {}",
                    i.name,
                    seen.method,
                    seen.path
                );
            }
        }
    }
}

/// The fields of an `anyedge-route` value, by name.
fn route_fields(route: &str) -> std::collections::HashMap<String, String> {
    route
        .split(';')
        .filter_map(|f| f.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Unloaded requests stay in the node's region; with `ord`'s instances at their hard limit,
/// new requests spill to `syd` at once instead of queueing. The `anyedge-route` trace tells
/// which and why to a holder of the app's token only, and the token never reaches an instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearest_region_first_then_spill_over_with_the_route_trace() {
    let ord1 = ScriptedInstance::start("ord-1").await;
    let ord2 = ScriptedInstance::start("ord-2").await;
    let syd1 = ScriptedInstance::start("syd-1").await;
    let port = free_port();
    let toml = format!(
        "{NODE}{}",
        app(
            "web",
            port,
            "concurrency = { type = \"requests\", soft_limit = 1, hard_limit = 2 }\nlimits = { max_inflight = 100, queue = 50, queue_timeout = \"10s\" }",
            &[(&ord1, "ord"), (&ord2, "ord"), (&syd1, "syd")]
        )
    );
    let node = node(&toml).await;
    let mut c = Client::h1(local(port)).await;

    // Unloaded: all in ord, spread over both instances.
    let mut seen = Vec::new();
    for _ in 0..30 {
        let a = get(&mut c, "web.test", "/", &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        seen.push(a.instance().to_string());
    }
    assert!(seen.iter().all(|i| i.starts_with("ord-")), "{seen:?}");
    assert!(seen.iter().any(|i| i == "ord-1") && seen.iter().any(|i| i == "ord-2"));
    assert_eq!(syd1.requests(), 0);

    // The trace, with the token: the choice, why, and every candidate.
    let traced = [("anyedge-debug", "route"), ("anyedge-debug-token", TOKEN)];
    let a = get(&mut c, "web.test", "/", &traced).await;
    assert_eq!(a.status, 200);
    let route = a
        .header("anyedge-route")
        .expect("anyedge-route with a valid token");
    let f = route_fields(route);
    assert_eq!(f["chosen"], a.instance(), "{route}");
    assert!(f["why"].contains("nearest_region"), "{route}");
    assert!(f["why"].contains("below_soft_limit"), "{route}");
    assert_eq!(f["preference_unmet"], "false", "{route}");
    assert_eq!(f["attempts"], "1", "{route}");
    assert_eq!(f["replays"], "0", "{route}");
    for (id, region, state) in [
        ("ord-1", "ord", "ok"),
        ("ord-2", "ord", "ok"),
        ("syd-1", "syd", "ok"),
    ] {
        let entry = f["candidates"]
            .split(", ")
            .find(|c| c.starts_with(&format!("{id}@{region} ")))
            .unwrap_or_else(|| panic!("{id}@{region} in {route}"));
        assert!(
            entry.ends_with(&format!(" 0/1/2 {state}")),
            "{entry} in {route}"
        );
    }
    assert!(f["candidates"].contains("ord-1@ord ~1.0ms"), "{route}");

    // Without a token, with a wrong one, or with a token but no `debug: route`: no trace.
    for headers in [
        vec![("anyedge-debug", "route")],
        vec![("anyedge-debug", "route"), ("anyedge-debug-token", "wrong")],
        vec![("anyedge-debug-token", TOKEN)],
    ] {
        let a = get(&mut c, "web.test", "/", &headers).await;
        assert_eq!(a.status, 200);
        assert!(a.header("anyedge-route").is_none(), "{headers:?}: {a:?}");
    }

    // One request held on each ord instance: both over the soft limit, still chosen (nearest
    // region before tier).
    let hold = |n: usize| {
        (0..n)
            .map(|_| {
                tokio::spawn(async move {
                    let mut c = Client::h1(local(port)).await;
                    get(&mut c, "web.test", "/hold", &[]).await
                })
            })
            .collect::<Vec<_>>()
    };
    let mut holds = hold(2);
    eventually("one held on each ord instance", DEADLINE, || async {
        (ord1.held() == 1 && ord2.held() == 1).then_some(())
    })
    .await;
    let a = get(&mut c, "web.test", "/", &traced).await;
    assert!(a.instance().starts_with("ord-"), "{a:?}");
    let route = a.header("anyedge-route").expect("trace");
    assert!(
        route_fields(route)["why"].contains("over_soft_limit"),
        "{route}"
    );

    // Both ord instances at their hard limit: the next requests go to syd, without queueing.
    holds.extend(hold(2));
    eventually("ord is full", DEADLINE, || async {
        (ord1.held() == 2 && ord2.held() == 2).then_some(())
    })
    .await;
    assert_eq!(syd1.held(), 0, "nothing spilled while ord had room");
    let queued = counter(
        &admin_metrics(&node).await,
        "anyedge_queued_total{app=\"web\"}",
    );
    for _ in 0..5 {
        let started = Instant::now();
        let a = get(&mut c, "web.test", "/", &traced).await;
        assert_eq!((a.status, a.instance()), (200, "syd-1"), "{a:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let route = a.header("anyedge-route").expect("trace");
        let f = route_fields(route);
        assert_eq!(f["chosen"], "syd-1", "{route}");
        assert!(f["why"].contains("nearest_region"), "{route}");
        for id in ["ord-1", "ord-2"] {
            assert!(
                f["candidates"].contains(&format!("{id}@ord ~1.0ms 2/1/2 at_hard_limit")),
                "{route}"
            );
        }
        assert!(f["candidates"].contains("syd-1@syd ~"), "{route}");
    }
    let m = admin_metrics(&node).await;
    assert_eq!(
        counter(&m, "anyedge_queued_total{app=\"web\"}"),
        queued,
        "spilled, not queued"
    );
    assert_eq!(
        counter(
            &m,
            "anyedge_app_concurrency{app=\"web\",instance=\"ord-1\"}"
        ),
        2.0
    );

    // Released: back to ord.
    ord1.release(2);
    ord2.release(2);
    for h in holds {
        let a = h.await.expect("hold");
        assert_eq!(a.status, 200);
        assert!(a.instance().starts_with("ord-"));
    }
    counts_return_to_zero(&node, "web", &[&ord1, &ord2, &syd1]).await;
    for _ in 0..10 {
        let a = get(&mut c, "web.test", "/", &[]).await;
        assert!(a.instance().starts_with("ord-"), "{a:?}");
    }
    no_routing_headers_reached(&[&ord1, &ord2, &syd1]);
    node.shutdown(Duration::from_secs(2)).await;
}

/// `anyedge-force-region`, `-prefer-region`, `-force-instance-id` and `-prefer-instance-id`,
/// honoured and refused, with a live and a stopped far instance. None reaches an instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_and_prefer_headers_each_way() {
    let ord1 = ScriptedInstance::start("ord-1").await;
    let ord2 = ScriptedInstance::start("ord-2").await;
    let mut syd1 = ScriptedInstance::start("syd-1").await;
    let port = free_port();
    let toml = format!(
        "{NODE}{}",
        app(
            "web",
            port,
            "concurrency = { type = \"requests\", soft_limit = 20, hard_limit = 25 }",
            &[(&ord1, "ord"), (&ord2, "ord"), (&syd1, "syd")]
        )
    );
    let node = node(&toml).await;
    let mut c = Client::h1(local(port)).await;
    let at = |a: &Answer| (a.status, a.instance().to_string());
    let ok = |i: &str| (200, i.to_string());
    let unmet = "anyedge-preferred-instance-unavailable";

    for _ in 0..5 {
        // Forced to the far region, or to the first existing region of a list.
        let a = get(&mut c, "web.test", "/", &[("anyedge-force-region", "syd")]).await;
        assert_eq!(at(&a), ok("syd-1"), "{a:?}");
        let a = get(
            &mut c,
            "web.test",
            "/",
            &[("anyedge-force-region", "nowhere, SYD")],
        )
        .await;
        assert_eq!(at(&a), ok("syd-1"), "{a:?}");
        let a = get(
            &mut c,
            "web.test",
            "/",
            &[("anyedge-force-region", "syd,ord")],
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(
            a.instance().starts_with("ord-"),
            "nearest of the forced: {a:?}"
        );
        // Preferred region and instances.
        let a = get(&mut c, "web.test", "/", &[("anyedge-prefer-region", "syd")]).await;
        assert_eq!(at(&a), ok("syd-1"), "{a:?}");
        assert!(a.header(unmet).is_none(), "{a:?}");
        let a = get(
            &mut c,
            "web.test",
            "/",
            &[("anyedge-prefer-instance-id", "ord-2")],
        )
        .await;
        assert_eq!(at(&a), ok("ord-2"), "{a:?}");
        assert!(a.header(unmet).is_none(), "{a:?}");
        let a = get(
            &mut c,
            "web.test",
            "/",
            &[("anyedge-prefer-instance-id", "syd-1")],
        )
        .await;
        assert_eq!(at(&a), ok("syd-1"), "preferred over nearer: {a:?}");
        let a = get(
            &mut c,
            "web.test",
            "/",
            &[("anyedge-force-instance-id", "syd-1")],
        )
        .await;
        assert_eq!(at(&a), ok("syd-1"), "{a:?}");
        let a = get(
            &mut c,
            "web.test",
            "/",
            &[("anyedge-force-instance-id", "ord-1")],
        )
        .await;
        assert_eq!(at(&a), ok("ord-1"), "{a:?}");
    }

    // A preference that cannot be met: served elsewhere, and told so.
    let a = get(
        &mut c,
        "web.test",
        "/",
        &[("anyedge-prefer-instance-id", "ghost")],
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.instance().starts_with("ord-"), "nearest instead: {a:?}");
    assert_eq!(a.header(unmet), Some("ghost"), "{a:?}");
    let a = get(&mut c, "web.test", "/", &[("anyedge-prefer-region", "ams")]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.instance().starts_with("ord-"), "{a:?}");
    assert!(a.header(unmet).is_some(), "{a:?}");

    // A forced target that does not exist.
    for (h, v) in [
        ("anyedge-force-region", "ams"),
        ("anyedge-force-region", "nowhere"),
        ("anyedge-force-instance-id", "ghost"),
    ] {
        let a = get(&mut c, "web.test", "/", &[(h, v)]).await;
        assert_eq!(a.status, 503, "{h}: {v}: {a:?}");
        assert_eq!(
            a.header("anyedge-error"),
            Some("forced_target_unavailable"),
            "{a:?}"
        );
        assert!(a.header("retry-after").is_some());
        assert!(a.body.starts_with("forced_target_unavailable"), "{a:?}");
    }

    // syd-1 stops: preferring it goes elsewhere (told so), forcing it fails.
    let syd_served = syd1.answered();
    syd1.kill().await;
    for _ in 0..3 {
        let a = get(
            &mut c,
            "web.test",
            "/",
            &[("anyedge-prefer-instance-id", "syd-1")],
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.instance().starts_with("ord-"), "{a:?}");
        assert_eq!(a.header(unmet), Some("syd-1"), "{a:?}");
        let a = get(&mut c, "web.test", "/", &[("anyedge-prefer-region", "syd")]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.instance().starts_with("ord-"), "{a:?}");
        assert!(a.header(unmet).is_some(), "{a:?}");
        for (h, v) in [
            ("anyedge-force-region", "syd"),
            ("anyedge-force-instance-id", "syd-1"),
        ] {
            let a = get(&mut c, "web.test", "/", &[(h, v)]).await;
            assert_eq!(a.status, 503, "{h}: {v}: {a:?}");
            assert_eq!(
                a.header("anyedge-error"),
                Some("forced_target_unavailable"),
                "{a:?}"
            );
        }
    }
    assert_eq!(syd1.answered(), syd_served);
    no_routing_headers_reached(&[&ord1, &ord2, &syd1]);
    let m = admin_metrics(&node).await;
    assert!(
        counter(
            &m,
            "anyedge_errors_total{app=\"web\",code=\"forced_target_unavailable\"}"
        ) == 9.0,
        "{m}"
    );
    counts_return_to_zero(&node, "web", &[&ord1, &ord2, &syd1]).await;
    node.shutdown(Duration::from_secs(2)).await;
}

/// Three instances under a loop of sequential and concurrent GETs; one is killed (listener and
/// connections closed) between requests. No client sees an error, apart from requests the
/// killed instance had already received on a connection's first request (none, in practice);
/// connect failures are retried on another instance and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_run_costs_no_client_a_request() {
    let k1 = ScriptedInstance::start("k-1").await;
    let mut k2 = ScriptedInstance::start("k-2").await;
    let k3 = ScriptedInstance::start("k-3").await;
    let port = free_port();
    let toml = format!(
        "{NODE}{}",
        app(
            "kill",
            port,
            "concurrency = { type = \"requests\", soft_limit = 20, hard_limit = 25 }",
            &[(&k1, "ord"), (&k2, "ord"), (&k3, "ord")]
        )
    );
    let node = node(&toml).await;
    const BEFORE: usize = 300;
    const TOTAL: usize = 1_200;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // One sequential client and six concurrent ones, each on its own keep-alive connection.
    let clients: Vec<_> = (0..7)
        .map(|n| {
            let (done, stop, failures) = (done.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut c = Client::h1(local(port)).await;
                let mut served = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let req = request("GET", "kill.test", &format!("/c{n}"), false)
                        .body(empty())
                        .expect("request");
                    match c.send(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let who = resp
                                .headers()
                                .get("x-instance")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let code = resp.headers().get("anyedge-error").cloned();
                            let body = resp.into_body().collect().await;
                            if status != 200 || body.is_err() {
                                failures
                                    .lock()
                                    .expect("failures")
                                    .push(format!("{status} {code:?} {body:?}"));
                            } else {
                                served.push(who);
                            }
                        }
                        Err(e) => {
                            failures
                                .lock()
                                .expect("failures")
                                .push(format!("client: {e}"));
                            c = Client::h1(local(port)).await;
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                served
            })
        })
        .collect();
    eventually("requests before the kill", DEADLINE, || async {
        (done.load(Ordering::SeqCst) >= BEFORE).then_some(())
    })
    .await;
    k2.kill().await;
    let killed_at = Instant::now();
    let answered_by_k2 = k2.answered();
    assert!(answered_by_k2 > 0, "k-2 took part before the kill");
    let (a1, a3) = (k1.answered(), k3.answered());
    eventually("requests after the kill", DEADLINE, || async {
        (done.load(Ordering::SeqCst) >= TOTAL && killed_at.elapsed() > Duration::from_secs(1))
            .then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut served = Vec::new();
    for c in clients {
        served.extend(c.await.expect("client"));
    }
    let failures = failures.lock().expect("failures").clone();
    let total = done.load(Ordering::SeqCst);
    eprintln!(
        "{total} requests, {} failed; k-2 lost {} ({} on a first request)",
        failures.len(),
        k2.lost(),
        k2.lost_first()
    );
    assert!(
        failures.len() <= k2.lost_first(),
        "only requests the killed instance had received may fail: {failures:?}"
    );
    assert_eq!(served.len() + failures.len(), total);
    assert_eq!(
        k2.answered(),
        answered_by_k2,
        "nothing answered after the kill"
    );
    assert!(
        k1.answered() > a1 && k3.answered() > a3,
        "the others took over"
    );
    let answered = k1.answered() + k2.answered() + k3.answered();
    assert_eq!(answered, served.len(), "every 200 came from an instance");

    let m = admin_metrics(&node).await;
    let retries = |reason: &str| {
        counter(
            &m,
            &format!("anyedge_retries_total{{app=\"kill\",reason=\"{reason}\"}}"),
        )
    };
    assert!(
        retries("connect") >= 1.0,
        "connect failures to k-2 were retried elsewhere:\n{m}"
    );
    eprintln!(
        "retries: connect {} stale_connection {}",
        retries("connect"),
        retries("stale_connection")
    );
    counts_return_to_zero(&node, "kill", &[&k1, &k2, &k3]).await;
    node.shutdown(Duration::from_secs(2)).await;
}

/// Retries only when provably safe. On a reused keep-alive connection the instance closes
/// before any response byte: a GET goes again (once, on a fresh connection), a POST does not.
/// A response that breaks off after its head is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_only_before_any_response_byte_and_only_idempotent_requests() {
    let inst = ScriptedInstance::start("r-1").await;
    let port = free_port();
    let node = node(&format!(
        "{NODE}{}",
        app("retry", port, "", &[(&inst, "ord")])
    ))
    .await;
    let mut c = Client::h1(local(port)).await;
    let count = |path: &str| inst.seen().iter().filter(|s| s.path == path).count();
    let stale = |m: &str| {
        counter(
            m,
            "anyedge_retries_total{app=\"retry\",reason=\"stale_connection\"}",
        )
    };
    // A pooled connection to the instance, idle again (the request's slot is released when
    // its response has been read, and the connection goes back to the pool with it).
    assert_eq!(get(&mut c, "retry.test", "/", &[]).await.status, 200);
    counts_return_to_zero(&node, "retry", &[&inst]).await;
    let before = stale(&admin_metrics(&node).await);
    let a = get(&mut c, "retry.test", "/drop", &[]).await;
    assert_eq!(a.status, 502, "{a:?}");
    assert_eq!(a.header("anyedge-error"), Some("upstream_error"));
    assert_eq!(
        count("/drop"),
        2,
        "a GET is sent again on a fresh connection"
    );
    assert_eq!(stale(&admin_metrics(&node).await), before + 1.0);

    assert_eq!(get(&mut c, "retry.test", "/", &[]).await.status, 200);
    counts_return_to_zero(&node, "retry", &[&inst]).await;
    let req = request("POST", "retry.test", "/drop", false)
        .body(anyedge_test_support::http_client::full("order 66"))
        .expect("request");
    let resp = c.send(req).await.expect("response");
    assert_eq!(resp.status(), 502);
    resp.into_body().collect().await.expect("body");
    assert_eq!(count("/drop"), 3, "a POST is not sent again");
    assert_eq!(stale(&admin_metrics(&node).await), before + 1.0);

    // The head went out: the client gets it and a broken body, and nothing is resent.
    let req = request("GET", "retry.test", "/truncate", false)
        .body(empty())
        .expect("request");
    let resp = c.send(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.is_err(),
        "the body breaks off"
    );
    assert_eq!(
        count("/truncate"),
        1,
        "never resent after the response started"
    );
    let m = admin_metrics(&node).await;
    assert_eq!(stale(&m), before + 1.0);
    assert_eq!(
        counter(
            &m,
            "anyedge_retries_total{app=\"retry\",reason=\"connect\"}"
        ),
        0.0
    );
    counts_return_to_zero(&node, "retry", &[&inst]).await;
    node.shutdown(Duration::from_secs(2)).await;
}
