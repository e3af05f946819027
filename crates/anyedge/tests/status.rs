//! `/v1/status` (the operator's picture), `/v1/apps/<app>/status` (an app owner's, behind that
//! app's bearer token), the optional operator token, and `anyedge status --json` against a
//! real node.

use anyedge::node::Node;
use anyedge_test_support::http_client::Client;
use anyedge_test_support::http_instance::HttpInstance;
use anyedge_test_support::{eventually, free_port};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

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
    use anyedge_test_support::http_client::{empty, request};
    let mut c = Client::h1(admin).await;
    let mut req = request("GET", "admin", path, false);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = c.send(req.body(empty()).expect("req")).await.expect("resp");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn json(admin: SocketAddr, path: &str, token: Option<&str>) -> Value {
    let (status, body) = get(admin, path, token).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

fn app<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name} in {status}"))
}

/// Two apps, alpha and beta, each with one instance (with an active check) behind an HTTP
/// port, and their owners' tokens; `admin_extra` goes into `[admin]`.
fn two_apps(port: u16, alpha: SocketAddr, beta: SocketAddr, admin_extra: &str) -> String {
    let app = |name: &str, token: &str, addr: SocketAddr| {
        format!(
            "[[apps]]\nname = \"{name}\"\nhostnames = [\"{name}.test\"]\ntokens_sha256 = [\"{}\"]\nconcurrency = {{ type = \"requests\", soft_limit = 7, hard_limit = 9 }}\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  checks = [ {{ type = \"http\", path = \"/healthz\", interval = \"200ms\", timeout = \"150ms\", unhealthy_threshold = 1, healthy_threshold = 1 }} ]\n  [[apps.instances]]\n  id = \"{name}-inst-1\"\n  region = \"{name}land\"\n  address = \"{addr}\"\n",
            sha256_hex(token),
        )
    };
    format!(
        "[node]\nid = \"status-node\"\nregion = \"ord\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n{}{}",
        app("alpha", "alpha-secret", alpha),
        app("beta", "beta-secret", beta)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_node_apps_instances_and_moves_with_traffic() {
    let (a, b) = (
        HttpInstance::start("a", false).await,
        HttpInstance::start("b", false).await,
    );
    let port = free_port();
    let config =
        anyedge_config::parse(&two_apps(port, a.addr, b.addr, ""), "t.toml").expect("config");
    let node = Node::start(config, Some(local(0))).await.expect("node");
    let admin = node.admin_addr();

    let s = json(admin, "/v1/status", None).await;
    assert_eq!(s["version"], 1);
    assert_eq!(s["node"]["id"], "status-node");
    assert_eq!(s["node"]["region"], "ord");
    assert_eq!(s["catalog"]["store"], "file");
    let listeners = s["listeners"].as_array().expect("listeners");
    assert!(
        listeners
            .iter()
            .any(|l| l["address"] == format!("127.0.0.1:{port}") && l["apps"] == 2),
        "{listeners:?}"
    );
    let alpha = app(&s, "alpha");
    let inst = &alpha["instances"][0];
    assert_eq!(inst["id"], "alpha-inst-1");
    assert_eq!(inst["region"], "alphaland");
    assert_eq!(inst["node"], "status-node");
    assert_eq!(inst["state"], "running");
    assert_eq!(inst["soft_limit"], 7);
    assert_eq!(inst["hard_limit"], 9);
    assert_eq!(inst["inflight"], 0);
    assert!(
        inst.get("rtt_ms").is_some(),
        "RTT is reported (null here: local)"
    );
    let regions: Vec<&Value> = s["regions"].as_array().expect("regions").iter().collect();
    assert!(
        regions.iter().any(|r| r["name"] == "alphaland"),
        "{regions:?}"
    );
    assert_eq!(alpha["requests_total"], 0);

    // A request moves the counters at once; the instance is healthy.
    let mut c = Client::h1(local(port)).await;
    assert_eq!(c.get("alpha.test", "/").await.0, 200);
    let s = json(admin, "/v1/status", None).await;
    let alpha = app(&s, "alpha");
    assert_eq!(alpha["requests_total"], 1);
    assert_eq!(alpha["responses"]["2xx"], 1);
    assert_eq!(alpha["status_codes"]["200"], 1);
    assert_eq!(app(&s, "beta")["requests_total"], 0);
    assert_eq!(alpha["instances"][0]["healthy"], true);

    // Its check fails: the instance turns unhealthy in the picture.
    a.set_health(503);
    eventually(
        "alpha's instance unhealthy",
        Duration::from_secs(10),
        || async {
            let s = json(admin, "/v1/status", None).await;
            let i = &app(&s, "alpha")["instances"][0];
            (i["healthy"] == false && i["health"] == "unhealthy").then_some(())
        },
    )
    .await;
    assert_eq!(
        app(&json(admin, "/v1/status", None).await, "beta")["instances"][0]["healthy"],
        true
    );

    // A reload is remembered, with the generation it put in force.
    let config =
        anyedge_config::parse(&two_apps(port, a.addr, b.addr, ""), "t.toml").expect("config");
    node.reload(config);
    let s = json(admin, "/v1/status", None).await;
    assert_eq!(s["reloads"]["ok"], 1);
    assert_eq!(s["reloads"]["recent"][0]["ok"], true);
    assert_eq!(
        s["reloads"]["recent"][0]["generation"],
        s["node"]["generation"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_sees_only_their_app_and_nothing_answers_other_tokens() {
    let (a, b) = (
        HttpInstance::start("a", false).await,
        HttpInstance::start("b", false).await,
    );
    let port = free_port();
    let config =
        anyedge_config::parse(&two_apps(port, a.addr, b.addr, ""), "t.toml").expect("config");
    let node = Node::start(config, Some(local(0))).await.expect("node");
    let admin = node.admin_addr();
    let mut c = Client::h1(local(port)).await;
    assert_eq!(c.get("beta.test", "/").await.0, 200);
    assert_eq!(c.get("alpha.test", "/").await.0, 200);

    let (status, body) = get(admin, "/v1/apps/alpha/status", Some("alpha-secret")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["app"]["name"], "alpha");
    assert_eq!(v["app"]["requests_total"], 1);
    assert_eq!(v["app"]["instances"][0]["id"], "alpha-inst-1");
    assert!(
        !body.contains("beta") && !body.contains(&b.addr.to_string()),
        "nothing of beta in alpha's view: {body}"
    );
    assert!(v.get("apps").is_none() && v.get("listeners").is_none() && v.get("reloads").is_none());

    // Wrong, other, none, unknown app: the same 403, naming nobody.
    for (path, token) in [
        ("/v1/apps/alpha/status", Some("beta-secret")),
        ("/v1/apps/alpha/status", Some("wrong")),
        ("/v1/apps/alpha/status", None),
        ("/v1/apps/nobody/status", Some("alpha-secret")),
        ("/v1/apps/alpha/status/stream", Some("beta-secret")),
        ("/v1/apps/alpha/status/stream", None),
        ("/v1/apps/beta/metrics", Some("alpha-secret")),
    ] {
        let (status, body) = get(admin, path, token).await;
        assert_eq!(status, 403, "{path} with {token:?}");
        assert_eq!(body, "forbidden\n", "{path}: the 403 says nothing more");
    }
    // The owner's page itself holds no data: the same bytes for any name.
    let (s1, page_a) = get(admin, "/apps/alpha", None).await;
    let (s2, page_x) = get(admin, "/apps/nobody", None).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(page_a, page_x);
    assert!(!page_a.contains("alpha") && !page_a.contains("beta"));

    // The owner's live stream: alpha's picture, nothing of beta.
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /v1/apps/alpha/status/stream HTTP/1.1\r\nhost: a\r\nauthorization: Bearer alpha-secret\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "stream ended");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if text.matches("event: status").count() >= 2 {
                return text.into_owned();
            }
        }
    })
    .await
    .expect("two pictures within 10 s");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("\"name\":\"alpha\""));
    assert!(!seen.contains("beta"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_token_locks_the_full_view_and_loopback_is_the_default() {
    assert_eq!(
        anyedge_config::parse("", "empty.toml")
            .expect("empty config")
            .admin
            .listen,
        local(9180),
        "the admin listener is on loopback unless told otherwise"
    );
    let (a, b) = (
        HttpInstance::start("a", false).await,
        HttpInstance::start("b", false).await,
    );
    let port = free_port();
    let extra = format!("tokens_sha256 = [\"{}\"]", sha256_hex("ops-secret"));
    let config =
        anyedge_config::parse(&two_apps(port, a.addr, b.addr, &extra), "t.toml").expect("config");
    let node = Node::start(config, Some(local(0))).await.expect("node");
    let admin = node.admin_addr();
    for path in ["/v1/status", "/v1/status/stream", "/metrics"] {
        assert_eq!(
            get(admin, path, None).await.0,
            403,
            "{path} without a token"
        );
        assert_eq!(
            get(admin, path, Some("alpha-secret")).await.0,
            403,
            "{path}: an owner's token is not the operator's"
        );
    }
    assert_eq!(
        json(admin, "/v1/status", Some("ops-secret")).await["node"]["admin_token_required"],
        true
    );
    assert_eq!(get(admin, "/metrics", Some("ops-secret")).await.0, 200);
    assert_eq!(
        get(admin, "/healthz", None).await.0,
        200,
        "health stays open"
    );
    assert_eq!(get(admin, "/", None).await.0, 200, "the page holds no data");
    // The operator's token opens any app's view; the owner's still opens its own.
    assert_eq!(
        get(admin, "/v1/apps/beta/status", Some("ops-secret"))
            .await
            .0,
        200
    );
    assert_eq!(
        get(admin, "/v1/apps/alpha/status", Some("alpha-secret"))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anyedge_status_prints_the_picture_and_its_json() {
    let (a, b) = (
        HttpInstance::start("a", false).await,
        HttpInstance::start("b", false).await,
    );
    let port = free_port();
    let config =
        anyedge_config::parse(&two_apps(port, a.addr, b.addr, ""), "t.toml").expect("config");
    let node = Node::start(config, Some(local(0))).await.expect("node");
    let admin = format!("http://{}", node.admin_addr());
    let status = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_anyedge"))
                .arg("status")
                .args(args)
                .output()
                .expect("run anyedge status")
        })
        .await
        .expect("join")
    };
    let mut c = Client::h1(local(port)).await;
    assert_eq!(c.get("alpha.test", "/").await.0, 200);
    let out = status(vec!["--admin".into(), admin.clone(), "--json".into()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(app(&v, "alpha")["requests_total"], 1);
    assert_eq!(app(&v, "alpha")["instances"][0]["healthy"], true);

    // The same events as on the page: a request moves the counter, a failing instance turns
    // unhealthy.
    assert_eq!(c.get("alpha.test", "/").await.0, 200);
    a.set_health(503);
    eventually(
        "anyedge status --json shows the change",
        Duration::from_secs(10),
        || {
            let admin = admin.clone();
            async move {
                let out = status(vec!["--admin".into(), admin, "--json".into()]).await;
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                let alpha = app(&v, "alpha");
                (alpha["requests_total"] == 2 && alpha["instances"][0]["healthy"] == false)
                    .then_some(())
            }
        },
    )
    .await;

    let out = status(vec!["--admin".into(), admin.clone()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    for section in [
        "CATALOG",
        "REGIONS",
        "APPS",
        "INSTANCES",
        "LISTENERS",
        "CERTIFICATES",
        "RELOADS",
    ] {
        assert!(text.contains(section), "{section} in:\n{text}");
    }
    assert!(
        text.contains("alpha-inst-1") && text.contains("unhealthy"),
        "{text}"
    );

    let out = status(vec![
        "--admin".into(),
        admin.clone(),
        "--app".into(),
        "alpha".into(),
        "--token".into(),
        "beta-secret".into(),
    ])
    .await;
    assert!(!out.status.success(), "another app's token fails");
    let out = status(vec![
        "--admin".into(),
        admin,
        "--app".into(),
        "alpha".into(),
        "--token".into(),
        "alpha-secret".into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("alpha-inst-1") && !text.contains("beta"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_carries_the_busiest_hundred_apps_of_a_large_catalog() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let inst = HttpInstance::start("x", false).await;
    let port = free_port();
    let mut toml = String::new();
    for i in 0..150 {
        toml += &format!(
            "[[apps]]\nname = \"app{i:03}\"\nhostnames = [\"app{i:03}.test\"]\n  [[apps.services]]\n  ports = [ {{ port = {port}, bind = \"127.0.0.1\", handlers = [\"http\"] }} ]\n  [[apps.instances]]\n  id = \"i{i}\"\n  address = \"{}\"\n",
            inst.addr
        );
    }
    let config = anyedge_config::parse(&toml, "t.toml").expect("config");
    let node = Node::start(config, Some(local(0))).await.expect("node");
    let admin = node.admin_addr();
    let mut c = Client::h1(local(port)).await;
    assert_eq!(c.get("app149.test", "/").await.0, 200);

    let full = json(admin, "/v1/status", None).await;
    assert_eq!(full["apps"].as_array().map(Vec::len), Some(150));
    assert_eq!(full["apps_total"], 150);

    let mut s = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    s.write_all(b"GET /v1/status/stream HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let picture = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 65536];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "stream ended");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("data: ") && l.ends_with('}'))
            {
                return serde_json::from_str::<Value>(&line["data: ".len()..]).expect("json");
            }
        }
    })
    .await
    .expect("a picture");
    let apps = picture["apps"].as_array().expect("apps");
    assert_eq!(apps.len(), 100);
    assert_eq!(picture["apps_total"], 150);
    assert!(
        apps.iter().any(|a| a["name"] == "app149"),
        "the busiest app is in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_and_instances_that_come_and_go_come_and_go_in_the_picture() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b, a2) = (
        HttpInstance::start("a", false).await,
        HttpInstance::start("b", false).await,
        HttpInstance::start("a2", false).await,
    );
    let port = free_port();
    let config =
        anyedge_config::parse(&two_apps(port, a.addr, b.addr, ""), "t.toml").expect("config");
    let node = Node::start(config, Some(local(0))).await.expect("node");
    let admin = node.admin_addr();
    // beta's owner watches beta live.
    let mut watching = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    watching
        .write_all(b"GET /v1/apps/beta/status/stream HTTP/1.1\r\nhost: a\r\nauthorization: Bearer beta-secret\r\n\r\n")
        .await
        .expect("write");
    // Subscribed before beta leaves: its first picture has come (else the reload could win
    // the race and the request find beta gone: a 403, not a stream).
    let mut first = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        while !String::from_utf8_lossy(&first).contains("\"name\":\"beta\"") {
            match watching.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => first.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("beta's first picture within 10 s");

    // beta leaves; alpha gets a second instance in another region.
    let toml = two_apps(port, a.addr, b.addr, "");
    let alpha_only = &toml[..toml.find("[[apps]]\nname = \"beta\"").expect("beta block")];
    let toml = format!(
        "{alpha_only}  [[apps.instances]]\n  id = \"alpha-inst-2\"\n  region = \"elsewhere\"\n  address = \"{}\"\n",
        a2.addr
    );
    node.reload(anyedge_config::parse(&toml, "t.toml").expect("config"));
    let s = json(admin, "/v1/status", None).await;
    let apps: Vec<&Value> = s["apps"].as_array().expect("apps").iter().collect();
    assert_eq!(apps.len(), 1, "{apps:?}");
    let ids: Vec<&Value> = apps[0]["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| &i["id"])
        .collect();
    assert_eq!(ids, ["alpha-inst-1", "alpha-inst-2"]);
    let regions: Vec<&Value> = s["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .map(|r| &r["name"])
        .collect();
    assert!(
        regions.contains(&&Value::from("elsewhere"))
            && !regions.contains(&&Value::from("betaland")),
        "{regions:?}"
    );
    assert_eq!(
        get(admin, "/v1/apps/beta/status", Some("beta-secret"))
            .await
            .0,
        403,
        "beta is gone"
    );

    // beta's live stream ends with beta (the terminal chunk of the chunked body, then EOF).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        // After what was read already: the terminal chunk's CRLF may be in it.
        let mut got = first.clone();
        let mut buf = [0u8; 8192];
        loop {
            match watching.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.ends_with(b"\r\n0\r\n\r\n") {
                return got;
            }
        }
    })
    .await
    .expect("beta's stream ends within 10 s");
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.contains("\"name\":\"beta\""),
        "it had shown beta: {text}"
    );
    assert!(ended.ends_with(b"\r\n0\r\n\r\n"), "the stream ended");
}
