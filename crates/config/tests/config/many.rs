//! Several problems in one file are all reported, each at its own place, in file order.

use crate::{errors, line_of, show};

const TEXT: &str = r#"[node]
id = "edge 1"
roles = ["edge", "proxy"]
colour = "blue"

[admin]
listen = "localhost"

[limits]
connect_timeout = "3"

[[apps]]
name = "shop"
hostnames = ["shop.example.com"]
concurrency = { soft_limit = 50, hard_limit = 40 }
tokens_sha256 = ["abc"]

  [[apps.services]]
  internal_port = 8080
  ports = [ { port = 80, handlers = ["http"] }, { port = 0 },
            { port = "443" }, { port = 5432, handlers = ["proxy_proto", "proxy_proto"] },
            { port = 6000, handlers = ["tls"], proxy_proto = "v2", bnd = "127.0.0.1" } ]

  [[apps.instances]]
  id = "shop-1"
  address = "a b:c"

[[apps]]
name = "blog"
hostnames = ["SHOP.example.com"]

  [[apps.services]]
  internal_port = 8081
  ports = [ { port = 80, handlers = ["tls", "http"] } ]
"#;

#[test]
fn every_problem_is_reported_with_its_place() {
    let errs = errors(TEXT);
    let got: Vec<(&str, Option<usize>)> = errs.iter().map(|d| (d.path.as_str(), d.line)).collect();
    let line = |s| Some(line_of(TEXT, s));
    let want = vec![
        ("node.id", line("edge 1")),
        ("node.roles[1]", line("proxy")),
        ("node.colour", line("colour")),
        ("admin.listen", line("localhost")),
        ("limits.connect_timeout", line("connect_timeout")),
        ("apps[0].concurrency.soft_limit", line("soft_limit")),
        ("apps[0].tokens_sha256[0]", line("abc")),
        ("apps[0].services[0].ports[1].port", line("port = 0")),
        ("apps[0].services[0].ports[2].port", line("\"443\"")),
        ("apps[0].services[0].ports[3].handlers[1]", line("5432")),
        ("apps[0].services[0].ports[4].proxy_proto", line("6000")),
        ("apps[0].services[0].ports[4].bnd", line("6000")),
        ("apps[0].instances[0].address", line("a b:c")),
        ("apps[1].hostnames[0]", line("SHOP")),
        (
            "apps[1].services[0].ports[0].port",
            line("8081").map(|l| l + 1),
        ),
    ];
    assert_eq!(got, want, "\n{}", show(&errs));
    assert!(errs.iter().all(|d| d.file == "test" && d.column.is_some()));
    let rendered = show(&errs);
    assert!(
        rendered.contains("test:2:6: node.id: node id `edge 1` may only contain"),
        "{rendered}"
    );
}
