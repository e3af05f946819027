//! Every HTTP request is routed on the catalog current when its head arrives, whatever the
//! age of the connection it came on (issue: a kept-alive connection routed on the catalog of
//! its accept). Real HTTP/1.1 and h2c clients hold one connection across reloads of an
//! in-process node; the instances count what reaches them.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::Client;
use anyedge_test_support::http_instance::HttpInstance;
use std::net::SocketAddr;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An HTTP app on `port` with the given (id, address) instances.
fn app(name: &str, port: u16, instances: &[(&str, SocketAddr)]) -> String {
    let mut t = format!(
        "[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n"
    );
    for (id, addr) in instances {
        t += &format!("  [[apps.instances]]\n  id = \"{id}\"\n  address = \"{addr}\"\n");
    }
    t
}

fn config(toml: &str) -> anyedge_config::Config {
    anyedge_config::parse(toml, "keepalive.toml").unwrap_or_else(|d| panic!("{d}"))
}

async fn node(toml: &str) -> Node {
    Node::start(config(toml), Some(local(0)))
        .await
        .expect("node starts")
}

fn reload(node: &Node, toml: &str) {
    let errors = node.reload(config(toml));
    assert!(errors.is_empty(), "reload: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_instance_gets_no_request_from_a_held_connection() {
    for h2 in [false, true] {
        let (a, b) = (
            HttpInstance::start("a", false).await,
            HttpInstance::start("b", false).await,
        );
        let port = free_port();
        let node = node(&app("web", port, &[("web-a", a.addr), ("web-b", b.addr)])).await;
        let mut client = Client::plain(local(port), h2).await;
        // Warm: the held connection has used both instances (pooled connections to each).
        for _ in 0..40 {
            assert_eq!(client.get("web.test", "/").await.0, 200, "h2={h2}");
        }
        assert!(a.requests() > 0 && b.requests() > 0, "h2={h2}: both used");
        reload(&node, &app("web", port, &[("web-b", b.addr)]));
        let before = a.requests();
        for _ in 0..100 {
            let (status, headers, _) = client.get("web.test", "/").await;
            assert_eq!(status, 200, "h2={h2}");
            assert_eq!(headers["x-instance"], "b", "h2={h2}");
        }
        assert_eq!(
            a.requests(),
            before,
            "h2={h2}: the removed instance got requests"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_reused_by_another_app_is_not_reached_from_the_old_apps_connection() {
    for h2 in [false, true] {
        let shared = HttpInstance::start("shared-address", false).await;
        let port = free_port();
        let first = format!(
            "{}{}",
            app("alpha", port, &[("alpha-1", shared.addr)]),
            app("beta", port, &[])
        );
        let node = node(&first).await;
        let mut client = Client::plain(local(port), h2).await;
        assert_eq!(client.get("alpha.test", "/").await.0, 200, "h2={h2}");
        // alpha's only instance goes; its address now belongs to beta.
        let second = format!(
            "{}{}",
            app("alpha", port, &[]),
            app("beta", port, &[("beta-1", shared.addr)])
        );
        reload(&node, &second);
        let before = shared.requests();
        for _ in 0..20 {
            let (status, headers, _) = client.get("alpha.test", "/").await;
            assert_eq!(status, 503, "h2={h2}: alpha has no instance now");
            assert_eq!(headers["anyedge-error"], "no_instance_available", "h2={h2}");
        }
        assert_eq!(
            shared.requests(),
            before,
            "h2={h2}: alpha reached beta's instance"
        );
        // The same connection still reaches beta by its name.
        assert_eq!(client.get("beta.test", "/").await.0, 200, "h2={h2}");
        assert_eq!(shared.requests(), before + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_change_under_the_same_id_is_followed_within_one_request() {
    for h2 in [false, true] {
        let (old, new) = (
            HttpInstance::start("old", false).await,
            HttpInstance::start("new", false).await,
        );
        let port = free_port();
        let node = node(&app("web", port, &[("web-1", old.addr)])).await;
        let mut client = Client::plain(local(port), h2).await;
        for _ in 0..5 {
            assert_eq!(client.get("web.test", "/").await.2.trim(), "old", "h2={h2}");
        }
        reload(&node, &app("web", port, &[("web-1", new.addr)]));
        let before = old.requests();
        for _ in 0..20 {
            let (status, headers, _) = client.get("web.test", "/").await;
            assert_eq!(status, 200, "h2={h2}");
            assert_eq!(headers["x-instance"], "new", "h2={h2}");
        }
        assert_eq!(
            old.requests(),
            before,
            "h2={h2}: a pooled connection to the old address"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_app_answers_unknown_host_on_a_held_connection() {
    let inst = HttpInstance::start("gone", false).await;
    let port = free_port();
    let keep = app("keep", port, &[("keep-1", inst.addr)]);
    let node = node(&format!(
        "{keep}{}",
        app("gone", port, &[("gone-1", inst.addr)])
    ))
    .await;
    let mut client = Client::plain(local(port), false).await;
    assert_eq!(client.get("gone.test", "/").await.0, 200);
    reload(&node, &keep);
    let (status, headers, _) = client.get("gone.test", "/").await;
    assert_eq!(status, 404);
    assert_eq!(headers["anyedge-error"], "unknown_host");
    assert_eq!(client.get("keep.test", "/").await.0, 200);
}
