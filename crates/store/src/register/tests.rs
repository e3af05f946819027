//! Registration against a real etcd: keys under the lease, a lost lease granted anew with
//! every key put again, removed instances deleted, the lease revoked on stop.

use super::*;
use crate::client;
use anyedge_test_support::etcd::Etcd;
use etcd_client::GetOptions;

fn base(etcd: &Etcd, instances: &[&str]) -> Arc<Config> {
    let mut toml = format!(
        "[node]\nid = \"w1\"\nregion = \"syd\"\nadvertise = \"10.0.0.5:4280\"\n[catalog]\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n",
        etcd.url()
    );
    for id in instances {
        toml +=
            &format!("[[instances]]\napp = \"svc\"\nid = \"{id}\"\naddress = \"127.0.0.1:9\"\n");
    }
    Arc::new(anyedge_config::parse(&toml, "node.toml").expect("valid"))
}

/// The keys under the prefix, and their leases.
async fn keys_now(c: &mut Client) -> Vec<(String, i64)> {
    let resp = c
        .get("/anyedge/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
        .collect()
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_granted_anew_and_every_key_put_again() {
    let etcd = Etcd::start();
    let cfg = client::plain(&etcd.url());
    let mut c = connect(&cfg).await.expect("connect");
    let ttl = Duration::from_secs(3);
    let reg = Registration::start(cfg, Keys::default(), base(&etcd, &["a", "b"]), ttl);
    let wanted = [
        "/anyedge/instances/svc/a",
        "/anyedge/instances/svc/b",
        "/anyedge/nodes/w1",
    ];
    let names = |keys: &[(String, i64)]| keys.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    until("registered", || {
        let mut c = c.clone();
        async move { names(&keys_now(&mut c).await) == wanted }
    })
    .await;
    let first = keys_now(&mut c).await;
    let lease = first[0].1;
    assert!(
        lease != 0 && first.iter().all(|(_, l)| *l == lease),
        "{first:?}"
    );
    let node = c.get("/anyedge/nodes/w1", None).await.expect("get");
    let value = String::from_utf8_lossy(node.kvs()[0].value()).into_owned();
    assert!(value.contains("\"advertise\":\"10.0.0.5:4280\""), "{value}");
    // The node's key came first: an edge knows where the worker is before its instances.
    let all = c
        .get("/anyedge/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let created = |key: &str| {
        all.kvs()
            .iter()
            .find(|kv| kv.key() == key.as_bytes())
            .map(|kv| kv.create_revision())
    };
    let node_at = created("/anyedge/nodes/w1").expect("node key");
    for key in &wanted[..2] {
        assert!(created(key).expect("instance key") > node_at, "{key}");
    }

    // The lease is lost (as after an outage longer than its TTL): the next keep-alive answers
    // TTL 0, and the registration comes back under a new lease.
    c.lease_revoke(lease).await.expect("revoke");
    assert!(keys_now(&mut c).await.is_empty());
    until("registered again under a new lease", || {
        let mut c = c.clone();
        async move {
            let now = keys_now(&mut c).await;
            names(&now) == wanted && now.iter().all(|(_, l)| *l != lease && *l != 0)
        }
    })
    .await;

    // A reload without b deletes it.
    reg.update(base(&etcd, &["a"]));
    until("b deleted", || {
        let mut c = c.clone();
        async move { names(&keys_now(&mut c).await) == [wanted[0], wanted[2]] }
    })
    .await;

    reg.stop(Duration::from_secs(2)).await;
    assert!(keys_now(&mut c).await.is_empty(), "revoked on stop");
}
