//! `anyedge status`: the dashboard's picture in the terminal, one table per section, or the
//! JSON of `/v1/status` (or an app's `/v1/apps/<app>/status`) as the node sent it.

use crate::cli::StatusArgs;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::fmt::Write;
use std::process::ExitCode;
use std::time::Duration;

/// How long the whole request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: &StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = match &args.app {
        Some(app) => format!("/v1/apps/{app}/status"),
        None => "/v1/status".to_string(),
    };
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("ANYEDGE_ADMIN_TOKEN").ok());
    let body = match runtime.block_on(fetch(&args.admin, &path, token.as_deref())) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("anyedge status: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        print!("{}", String::from_utf8_lossy(&body));
        return ExitCode::SUCCESS;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            print!("{}", render(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("anyedge status: the node's answer is not JSON: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `host:port` of an admin URL (`http://127.0.0.1:9180`, or `127.0.0.1:9180`).
fn authority(url: &str) -> Result<&str, String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if url.starts_with("https://") {
        return Err("the admin listener speaks plain HTTP: use http://".into());
    }
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!("bad --admin `{url}`: expected http://HOST:PORT"));
    }
    Ok(host)
}

async fn fetch(url: &str, path: &str, token: Option<&str>) -> Result<Bytes, String> {
    let host = authority(url)?;
    let work = async {
        let stream = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| format!("cannot reach the admin listener at {host}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::get(path).header("host", host);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        match status.as_u16() {
            200 => Ok(body),
            403 => Err(format!(
                "{path}: 403 forbidden (give a token with --token or ANYEDGE_ADMIN_TOKEN)"
            )),
            s => Err(format!("{path}: HTTP {s}")),
        }
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer from {host} within {TIMEOUT:?}"))?
}

/// Text of a JSON value for a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// One table: a title, a header row, rows, columns padded to their widest cell.
fn table(out: &mut String, title: &str, head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let _ = writeln!(out, "{title}");
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from(" ");
        for (c, w) in cells.zip(&widths) {
            let _ = write!(s, " {c:<w$}");
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&mut head.iter().copied()));
    for row in rows {
        let _ = writeln!(out, "{}", line(&mut row.iter().map(String::as_str)));
    }
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    out.push('\n');
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

/// The picture as tables: node, catalog, regions, apps, instances, listeners, certificates,
/// reloads (an app's own view has the app, its instances and certificates).
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let c = |v: &Value, k: &str| cell(&v[k]);
    let node = &v["node"];
    if v.get("app").is_none() {
        let _ = writeln!(
            out,
            "node {} (region {}, {}), generation {}, {} open connections, up {}s\n",
            c(node, "id"),
            c(node, "region"),
            c(node, "status"),
            c(node, "generation"),
            c(node, "open_connections"),
            c(node, "uptime_seconds"),
        );
        let cat = &v["catalog"];
        let row = vec![
            c(cat, "store"),
            c(cat, "connected"),
            c(cat, "stale_seconds"),
            c(cat, "revision"),
            c(cat, "last_error"),
        ];
        let head = ["store", "connected", "stale_s", "revision", "last_error"];
        table(&mut out, "CATALOG", &head, &[row]);
        let mut rows = Vec::new();
        for r in v["regions"].as_array().into_iter().flatten() {
            for n in r["nodes"].as_array().into_iter().flatten() {
                rows.push(vec![
                    c(r, "name"),
                    c(n, "id"),
                    c(n, "self"),
                    format!("{}/{}", c(n, "healthy"), c(n, "instances")),
                    c(n, "rtt_ms"),
                    c(n, "load_feed_age_ms"),
                ]);
            }
        }
        let head = ["region", "node", "self", "healthy", "rtt_ms", "feed_age_ms"];
        table(&mut out, "REGIONS", &head, &rows);
    }
    let apps: Vec<&Value> = match v.get("app") {
        Some(app) => vec![app],
        None => v["apps"].as_array().into_iter().flatten().collect(),
    };
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let w = &a["window"];
            vec![
                c(a, "name"),
                c(a, "requests_total"),
                cell(get(w, &["requests_per_second"])),
                cell(get(w, &["latency_ms", "p50"])),
                cell(get(w, &["latency_ms", "p99"])),
                cell(get(a, &["responses", "2xx"])),
                cell(get(a, &["responses", "4xx"])),
                cell(get(a, &["responses", "5xx"])),
                c(a, "tcp_connects_total"),
                format!("{}/{}", c(a, "inflight"), c(a, "max_inflight")),
                format!(
                    "{}/{}",
                    c(a, "instances_healthy"),
                    a["instances"].as_array().map_or(0, Vec::len)
                ),
            ]
        })
        .collect();
    let head = [
        "app", "requests", "req/s", "p50_ms", "p99_ms", "2xx", "4xx", "5xx", "tcp", "inflight",
        "healthy",
    ];
    table(&mut out, "APPS", &head, &rows);
    let mut rows = Vec::new();
    for a in &apps {
        for i in a["instances"].as_array().into_iter().flatten() {
            rows.push(vec![
                c(a, "name"),
                c(i, "id"),
                c(i, "region"),
                c(i, "node"),
                c(i, "state"),
                c(i, "health"),
                format!(
                    "{}/{}/{}",
                    c(i, "inflight"),
                    c(i, "soft_limit"),
                    c(i, "hard_limit")
                ),
                c(i, "rtt_ms"),
            ]);
        }
    }
    let head = [
        "app",
        "instance",
        "region",
        "node",
        "state",
        "health",
        "inflight/soft/hard",
        "rtt_ms",
    ];
    table(&mut out, "INSTANCES", &head, &rows);
    if v.get("app").is_none() {
        let rows: Vec<Vec<String>> = v["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| vec![c(l, "address"), c(l, "kinds"), c(l, "apps")])
            .collect();
        table(&mut out, "LISTENERS", &["address", "kinds", "apps"], &rows);
    }
    let rows: Vec<Vec<String>> = v["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            vec![
                c(x, "hostname"),
                c(x, "app"),
                c(x, "source"),
                c(x, "expires_in_days"),
                c(x, "acme"),
                c(x, "acme_error"),
            ]
        })
        .collect();
    let head = [
        "hostname",
        "app",
        "source",
        "expires_in_days",
        "acme",
        "acme_error",
    ];
    table(&mut out, "CERTIFICATES", &head, &rows);
    if v.get("app").is_none() {
        let r = &v["reloads"];
        let rows: Vec<Vec<String>> = r["recent"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                vec![
                    c(x, "time_ms"),
                    c(x, "ok"),
                    c(x, "generation"),
                    c(x, "error"),
                ]
            })
            .collect();
        let title = format!("RELOADS ({} ok, {} failed)", c(r, "ok"), c(r, "failed"));
        table(
            &mut out,
            &title,
            &["time_ms", "ok", "generation", "error"],
            &rows,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_urls() {
        assert_eq!(
            super::authority("http://127.0.0.1:9180"),
            Ok("127.0.0.1:9180")
        );
        assert_eq!(super::authority("127.0.0.1:9180/"), Ok("127.0.0.1:9180"));
        assert!(super::authority("https://x:1").is_err());
        assert!(super::authority("http://x:1/v1").is_err());
    }
}
