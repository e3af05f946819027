//! ACME state in a real etcd: sealed values round-trip and do not open with another cluster's
//! key; one node at a time holds a hostname's lock, released when dropped and lost when the
//! holder dies (its lease runs out); a published challenge reaches another node's map, which
//! acknowledges it before the issuer goes on, and leaves it when withdrawn; a stored certificate is announced to the other nodes.

use anyedge_config::EtcdConfig;
use anyedge_store::acme::LOCK_TTL;
use anyedge_store::{EtcdCertStorage, Keys};
use anyedge_test_support::etcd::Etcd;
use anyedge_test_support::eventually;
use anyedge_tls::acme::{
    CertStorage, ChallengePem, Challenges, IssuerLock, Locking, SecretKey, Status, StoredCert,
};
use std::sync::Arc;
use std::time::Duration;

fn storage(etcd: &Etcd, node: &str, secret: [u8; 32]) -> Arc<EtcdCertStorage> {
    let cfg = EtcdConfig {
        endpoints: vec![etcd.url()],
        ca: None,
        cert: None,
        key: None,
        secret_key_file: None,
    };
    let key = SecretKey::from_bytes(&secret).expect("key");
    Arc::new(EtcdCertStorage::new(cfg, &Keys::default(), key, node))
}

async fn lock(s: &EtcdCertStorage, host: &str) -> Locking {
    s.lock(host).await.expect("etcd answers")
}

fn won(l: Locking) -> IssuerLock {
    match l {
        Locking::Won(lock) => lock,
        Locking::Busy { holder } => panic!("busy, held by {holder}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_values_round_trip_and_need_the_cluster_key() {
    let etcd = Etcd::start();
    let a = storage(&etcd, "edge-a", [1; 32]);
    assert_eq!(a.read_cert("a.test").await.expect("read"), None);
    let cert = StoredCert {
        chain_pem: "CHAIN".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----".into(),
    };
    a.write_cert("a.test", &cert).await.expect("write");
    a.write_account("{\"id\":\"acct\"}").await.expect("write");
    let status = Status::Pending { since: 5 };
    a.write_status("a.test", &status).await.expect("write");

    let b = storage(&etcd, "edge-b", [1; 32]);
    assert_eq!(b.read_cert("a.test").await.expect("read"), Some(cert));
    assert_eq!(
        b.read_account().await.expect("read").as_deref(),
        Some("{\"id\":\"acct\"}")
    );
    assert_eq!(b.read_status("a.test").await.expect("read"), Some(status));

    // Another cluster's key: an error, not a panic and not a wrong key.
    let stranger = storage(&etcd, "edge-x", [2; 32]);
    let err = stranger.read_cert("a.test").await.expect_err("refused");
    assert!(err.to_string().contains("does not open"), "{err}");
    assert!(stranger.read_account().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_a_dead_holder_loses_the_lock() {
    let etcd = Etcd::start();
    let a = storage(&etcd, "edge-a", [1; 32]);
    let b = storage(&etcd, "edge-b", [1; 32]);
    let held = won(lock(&a, "a.test").await);
    match lock(&b, "a.test").await {
        Locking::Busy { holder } => assert_eq!(holder, "edge-a"),
        Locking::Won(_) => panic!("two holders"),
    }
    // Another hostname is independent.
    let other = won(lock(&b, "b.test").await);
    drop(other);
    // Released when dropped (the lease is revoked).
    drop(held);
    let held = eventually(
        "edge-b taking the released lock",
        Duration::from_secs(5),
        || {
            let b = b.clone();
            async move {
                match lock(&b, "a.test").await {
                    Locking::Won(l) => Some(l),
                    Locking::Busy { .. } => None,
                }
            }
        },
    )
    .await;
    drop(held);

    // A holder that dies (its runtime gone: no keep-alive, no revoke) loses the lock when the
    // lease runs out, and another node takes over.
    let etcd_url = etcd.url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let cfg = EtcdConfig {
                endpoints: vec![etcd_url],
                ca: None,
                cert: None,
                key: None,
                secret_key_file: None,
            };
            let key = SecretKey::from_bytes(&[1; 32]).expect("key");
            let dying = EtcdCertStorage::new(cfg, &Keys::default(), key, "edge-dying");
            let lock = won(dying.lock("a.test").await.expect("etcd"));
            std::mem::forget(lock);
        });
        // The runtime is dropped here with the keeper task in it.
    })
    .join()
    .expect("thread");
    match lock(&b, "a.test").await {
        Locking::Busy { holder } => assert_eq!(holder, "edge-dying"),
        Locking::Won(_) => panic!("the dying holder's lock vanished at once"),
    }
    let started = std::time::Instant::now();
    eventually("the dead holder's lock expiring", LOCK_TTL * 2, || {
        let b = b.clone();
        async move { matches!(lock(&b, "a.test").await, Locking::Won(_)).then_some(()) }
    })
    .await;
    assert!(started.elapsed() <= LOCK_TTL * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_and_certificates_reach_the_other_nodes() {
    let etcd = Etcd::start();
    let a = storage(&etcd, "edge-a", [1; 32]);
    let b = storage(&etcd, "edge-b", [1; 32]);
    let b_challenges = Arc::new(Challenges::new());
    let (_task, mut changed) = b.follow(b_challenges.clone());

    let (_, parts): (_, ChallengePem) =
        anyedge_tls::acme::challenge_cert_parts("a.test", &[3; 32]).expect("challenge");
    // edge-b is a registered node: the issuer waits for its acknowledgement.
    let mut client = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("etcd");
    client
        .put(
            "/anyedge/nodes/edge-b",
            r#"{"schema":1,"id":"edge-b","region":"x"}"#,
            None,
        )
        .await
        .expect("register edge-b");
    let held = won(lock(&a, "a.test").await);
    let started = std::time::Instant::now();
    a.publish_challenge(&held, "a.test", &parts)
        .await
        .expect("publish");
    // Publishing waits until the others have it (acknowledged, well before the timeout).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let served = b_challenges.get("a.test").expect("installed on edge-b");
    assert_eq!(served.cert[0].as_ref(), parts.cert_der.as_slice());
    let acks = client
        .get(
            "/anyedge/acme/challenge-acks/a.test/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("acks");
    let keys: Vec<&[u8]> = acks.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(
        keys,
        [b"/anyedge/acme/challenge-acks/a.test/edge-b".as_slice()]
    );
    a.withdraw_challenge("a.test").await.expect("withdraw");
    eventually("withdrawn on edge-b", Duration::from_secs(5), || {
        let c = b_challenges.clone();
        async move { (!c.is_pending("a.test")).then_some(()) }
    })
    .await;

    // A registered node that never acknowledges (no [acme] there) delays validation by the
    // bounded wait only.
    client
        .put(
            "/anyedge/nodes/worker-z",
            r#"{"schema":1,"id":"worker-z","region":"x"}"#,
            None,
        )
        .await
        .expect("register worker-z");
    // A challenge left behind by a holder goes with its lock's lease.
    let started = std::time::Instant::now();
    a.publish_challenge(&held, "a.test", &parts)
        .await
        .expect("publish");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert!(b_challenges.is_pending("a.test"));
    drop(held);
    eventually("gone with the lock", Duration::from_secs(5), || {
        let c = b_challenges.clone();
        async move { (!c.is_pending("a.test")).then_some(()) }
    })
    .await;

    // A stored certificate is announced by hostname.
    let cert = StoredCert {
        chain_pem: "CHAIN".into(),
        key_pem: "KEY".into(),
    };
    a.write_cert("a.test", &cert).await.expect("write");
    let name = tokio::time::timeout(Duration::from_secs(5), changed.recv())
        .await
        .expect("announced in time");
    assert_eq!(name.as_deref(), Some("a.test"));
}
