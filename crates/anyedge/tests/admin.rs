//! The admin listener: health, the operator's metrics, and each app's own metrics behind its
//! bearer token.

use anyedge::node::Node;
use anyedge_test_support::free_port;
use anyedge_test_support::http_client::Client;
use anyedge_test_support::http_instance::HttpInstance;
use std::net::SocketAddr;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Client::h1(admin).await;
    let mut req = anyedge_test_support::http_client::request("GET", "admin", path, false);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = c
        .send(
            req.body(anyedge_test_support::http_client::empty())
                .expect("req"),
        )
        .await
        .expect("resp");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_owners_read_their_own_metrics_with_their_token() {
    let inst = HttpInstance::start("x", false).await;
    let port = free_port();
    let app = |name: &str, token: &str| {
        format!(
            "[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\ntokens_sha256 = [\"{}\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"i\"\n  address = \"{}\"\n",
            sha256_hex(token),
            inst.addr
        )
    };
    let toml = format!(
        "{}{}",
        app("alpha", "alpha-secret"),
        app("beta", "beta-secret")
    );
    let node = Node::start(
        anyedge_config::parse(&toml, "t.toml").expect("config"),
        Some(local(0)),
    )
    .await
    .expect("node");
    let mut c = Client::h1(local(port)).await;
    assert_eq!(c.get("alpha.test", "/").await.0, 200);
    assert_eq!(c.get("beta.test", "/").await.0, 200);
    let admin = node.admin_addr();

    let (status, body) = get(admin, "/v1/apps/alpha/metrics", Some("alpha-secret")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("anyedge_edge_http_responses_total{app=\"alpha\",status=\"200\"} 1"),
        "{body}"
    );
    assert!(
        !body.contains("app=\"beta\""),
        "only alpha's series: {body}"
    );
    assert!(
        !body.contains("anyedge_config_reloads_total"),
        "no node series for app owners"
    );

    assert_eq!(
        get(admin, "/v1/apps/alpha/metrics", Some("beta-secret"))
            .await
            .0,
        403,
        "another app's token"
    );
    assert_eq!(
        get(admin, "/v1/apps/alpha/metrics", None).await.0,
        403,
        "no token"
    );
    assert_eq!(
        get(admin, "/v1/apps/nobody/metrics", Some("alpha-secret"))
            .await
            .0,
        403,
        "unknown app looks the same"
    );

    let (status, body) = get(admin, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("app=\"alpha\"") && body.contains("app=\"beta\""));
    let (status, body) = get(admin, "/healthz", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
}
