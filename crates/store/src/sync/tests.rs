//! The follower against a real etcd: a watch from a compacted revision asks for a relist, and
//! the relist converges; a running catalog follows puts and deletes.

use super::*;
use crate::client;
use crate::keys::Key;
use crate::values::encode_app;
use anyedge_test_support::etcd::Etcd;
use etcd_client::CompactionOptions;

fn app(name: &str) -> Vec<u8> {
    let toml = format!("[[apps]]\nname = \"{name}\"\n");
    encode_app(&anyedge_config::parse_apps(&toml, "t", None).expect("valid")[0])
}

fn names(state: &Mutex<CatalogState>) -> Vec<String> {
    state
        .lock()
        .expect("lock")
        .apps()
        .map(|a| a.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_relists_and_converges() {
    let etcd = Etcd::start();
    let cfg = client::plain(&etcd.url());
    let keys = Keys::default();
    let mut c = connect(&cfg).await.expect("connect");
    c.put(keys.key(&Key::App("a".into())), app("a"), None)
        .await
        .expect("put");
    let (tx, mut version) = watch::channel(0);
    let follower = Follower {
        cfg,
        keys: keys.clone(),
        state: Arc::new(Mutex::new(CatalogState::new(keys.clone()))),
        status: Arc::new(CatalogStatus::new()),
        version: tx,
    };
    let listed_at = follower.list(&mut c).await.expect("list");
    assert_eq!(names(&follower.state), ["a"]);
    // Changes after the listing, then a compaction past them: the events are gone.
    c.put(keys.key(&Key::App("b".into())), app("b"), None)
        .await
        .expect("put");
    c.delete(keys.key(&Key::App("a".into())), None)
        .await
        .expect("delete");
    let now = c
        .put(keys.key(&Key::App("c".into())), app("c"), None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    c.compact(now, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    version.borrow_and_update();
    // Watching from the revision after the listing is refused as compacted: relist (Ok), not
    // an error and not a loop.
    let end = tokio::time::timeout(Duration::from_secs(5), follower.watch(&mut c, listed_at))
        .await
        .expect("the watch ends at once");
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        names(&follower.state),
        ["a"],
        "nothing applied from the watch"
    );
    let relisted = follower.list(&mut c).await.expect("relist");
    assert!(relisted >= now);
    assert_eq!(names(&follower.state), ["b", "c"]);
    assert!(version.has_changed().expect("open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_catalog_follows_puts_and_deletes_after_its_listing() {
    let etcd = Etcd::start();
    let cfg = client::plain(&etcd.url());
    let keys = Keys::default();
    let mut c = connect(&cfg).await.expect("connect");
    c.put(keys.key(&Key::App("a".into())), app("a"), None)
        .await
        .expect("put");
    let mut catalog = EtcdCatalog::start(cfg, keys.clone(), edge());
    assert!(catalog.first_sync(Duration::from_secs(5)).await);
    assert!(catalog.status().connected());
    assert_eq!(names(&catalog.state), ["a"]);
    c.put(keys.key(&Key::App("b".into())), app("b"), None)
        .await
        .expect("put");
    c.delete(keys.key(&Key::App("a".into())), None)
        .await
        .expect("delete");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while names(&catalog.state) != ["b"] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            names(&catalog.state)
        );
        tokio::time::timeout(Duration::from_secs(5), catalog.changed())
            .await
            .expect("changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_that_cannot_load_says_why_until_it_loads() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let catalog = EtcdCatalog::start(client::plain(&etcd.url()), Keys::default(), edge());
    let status = catalog.status().clone();
    let why = anyedge_test_support::eventually("a reason", Duration::from_secs(10), || async {
        status.last_error()
    })
    .await;
    assert!(why.contains("etcd"), "{why}");
    assert!(!status.connected());
    etcd.start_again();
    assert!(catalog.first_sync(Duration::from_secs(15)).await);
    assert_eq!(status.last_error(), None);
}

/// The catalog as an edge node sees it: every change to apps and instances concerns it.
fn edge() -> Viewer {
    Viewer {
        node: "edge".into(),
        routes: true,
        backhaul: true,
    }
}
