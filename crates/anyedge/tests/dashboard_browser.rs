//! The dashboard in a real headless browser (Debian's chromium over its DevTools protocol),
//! against the demo fleet: the page shows the fleet's regions, nodes and instances; a request
//! through the edge moves the app's counter within 2 s without a reload; an instance stopped
//! during the test turns unhealthy; the owner's view with hello's token shows hello and no
//! trace of the other apps; no console errors. Screenshots of each state are kept under
//! `$CARGO_TARGET_TMPDIR/dashboard/`.

use anyedge_test_support::browser::Browser;
use anyedge_test_support::http_client::Client;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A base port whose +1, +2, +3, +50, +80 and +90 are free right now.
fn free_base() -> u16 {
    for _ in 0..100 {
        let base = anyedge_test_support::free_port().saturating_sub(1);
        let free = [1u16, 2, 3, 50, 80, 90].iter().all(|d| {
            base.checked_add(*d)
                .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no free demo base port");
}

fn shot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("dashboard")
        .join(name)
}

/// The `data-requests` figure of app `app` on the page (-1 while it is not drawn).
fn requests_of(app: &str) -> String {
    format!(
        "Number((document.querySelector('[data-app=\"{app}\"]') || {{}}).dataset?.requests ?? -1)"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_live_in_a_real_browser() {
    let base = free_base();
    let demo = anyedge::demo::start(base).await.expect("demo starts");
    let admin = demo.edge.admin_addr();
    let mut browser = Browser::launch(1400, 1800).await;

    // The fleet: every region, node and instance of the demo.
    let started = Instant::now();
    browser.navigate(&format!("http://{admin}/")).await;
    browser
        .wait_for(
            "the first picture",
            Duration::from_secs(10),
            "document.querySelectorAll('[data-app]').length === 6", // with sleepy (on demand)
        )
        .await;
    let load_to_draw = started.elapsed();
    let first_draw = browser
        .eval("performance.getEntriesByName('anyedge-first-draw')[0].startTime")
        .await;
    let bytes = browser
        .eval("performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')).filter(e => !e.name.includes('/stream')).reduce((n, e) => n + e.transferSize, 0)")
        .await;
    eprintln!("dashboard: first render {first_draw} ms after navigation start (navigate to drawn {load_to_draw:?}); {bytes} bytes transferred for the page and its assets");
    for region in ["ord", "iad", "syd"] {
        let q = format!("!!document.querySelector('[data-region=\"{region}\"]')");
        assert_eq!(browser.eval(&q).await, true, "region {region}");
    }
    for node in ["edge-ord", "ord-1", "iad-1", "syd-1"] {
        let q = format!("!!document.querySelector('[data-node=\"{node}\"]')");
        assert_eq!(browser.eval(&q).await, true, "node {node}");
    }
    for inst in [
        "hello-ord-1",
        "hello-ord-2",
        "hello-iad-1",
        "hello-syd-1",
        "echo-1",
        "ws-1",
    ] {
        let q = format!("document.querySelector('[data-instance=\"{inst}\"]')?.dataset.healthy");
        assert_eq!(browser.eval(&q).await, "true", "instance {inst} healthy");
    }
    browser.screenshot(&shot("1-fleet.png")).await;

    // A request through the edge moves hello's counter within 2 s, without a reload.
    browser.eval("window.__noReload = 42").await;
    let before = browser
        .eval(&requests_of("hello"))
        .await
        .as_i64()
        .expect("count");
    let mut client = Client::h1(SocketAddr::from(([127, 0, 0, 1], demo.http_port))).await;
    let sent = Instant::now();
    assert_eq!(client.get("hello.localhost", "/").await.0, 200);
    let took = browser
        .wait_for(
            "hello's counter moves",
            Duration::from_secs(2),
            &format!("{} === {}", requests_of("hello"), before + 1),
        )
        .await;
    eprintln!(
        "dashboard: the request showed on the page {:?} after it was sent",
        sent.elapsed().min(took + Duration::from_millis(1))
    );
    assert_eq!(
        browser.eval("window.__noReload").await,
        42,
        "the page was not reloaded"
    );
    browser.screenshot(&shot("2-request-counted.png")).await;

    // An instance stops: the page turns it unhealthy. One on ord's worker, which carried the
    // request above: an edge hears a worker's checks over the load feed of a backhaul link it
    // uses (docs/dashboard.md says so for the instances of workers it has no link to).
    assert!(demo.stop_instance("hello-ord-2"));
    browser
        .wait_for(
            "hello-ord-2 unhealthy",
            Duration::from_secs(15),
            "document.querySelector('[data-instance=\"hello-ord-2\"]')?.dataset.healthy === 'false'",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('[data-instance=\"hello-ord-1\"]')?.dataset.healthy")
            .await,
        "true",
        "the others stay healthy"
    );
    browser.screenshot(&shot("3-instance-stopped.png")).await;

    // The owner's view: asks for the token, then shows hello alone.
    browser
        .navigate(&format!("http://{admin}/apps/hello"))
        .await;
    browser
        .wait_for(
            "the token form",
            Duration::from_secs(5),
            "!document.getElementById('login').hidden",
        )
        .await;
    browser
        .eval(&format!(
            "document.getElementById('token').value = '{}'; document.getElementById('login').requestSubmit(); true",
            anyedge::demo::DEMO_TOKEN
        ))
        .await;
    browser
        .wait_for(
            "hello's own view",
            Duration::from_secs(5),
            "!!document.querySelector('[data-app=\"hello\"]')",
        )
        .await;
    let text = browser
        .eval("document.documentElement.outerHTML + document.body.innerText")
        .await;
    let text = text.as_str().expect("page text");
    assert!(text.contains("hello-iad-1"), "hello's instances are shown");
    for other in [
        "echo",
        "upper",
        "whoami",
        "ws-1",
        "ws.localhost",
        "(this node)",
    ] {
        assert!(!text.contains(other), "`{other}` on hello's owner view");
    }
    assert_eq!(
        browser
            .eval("document.querySelectorAll('[data-app]').length")
            .await,
        1
    );
    browser.screenshot(&shot("4-owner-view.png")).await;

    // One more round trip reads any event still in flight, then: a clean console.
    browser.eval("1").await;
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    drop(browser);
    demo.shutdown(Duration::from_secs(1)).await;
}
