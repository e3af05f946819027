//! One run of a check against one instance: a TCP connect, or an HTTP `GET` judged by its
//! status. The whole run, connect included, is bounded by the check's timeout. Used by the
//! active health checks (`crate::health`) and by the outlier probe ([`super::outlier`]).

use crate::instance::connect::{connect_one, AttemptError, Resolver};
use anyedge_catalog::{AppEntry, InstanceEntry};
use anyedge_config::{Check, CheckKind, HostPort};
use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;

/// The `User-Agent` of HTTP checks, so instances can leave them out of their logs.
pub(crate) const USER_AGENT_VALUE: &str = "anyedge-health";
/// Body bytes of a check's response read before the connection is dropped.
const BODY_LIMIT: usize = 64 * 1024;

/// Why a check failed. Every one of them is the instance's fault as far as placement is concerned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeFailure {
    #[error("no answer within {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("connect failed: {0}")]
    Connect(#[source] AttemptError),
    #[error("the check's request cannot be built (path {path:?}): {source}")]
    Request { path: String, source: http::Error },
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("answered status {status}")]
    Status { status: StatusCode },
}

/// Where to check `inst`: its address's port or the service's `internal_port`. HTTP checks
/// carry the app's first hostname that is not a wildcard as `Host`, else the instance address.
pub(crate) fn probe_for(
    app: &AppEntry,
    inst: &InstanceEntry,
    internal_port: Option<u16>,
    check: &Check,
) -> Option<Probe> {
    let port = inst.address.port.or(internal_port)?;
    let authority = app
        .config
        .hostnames
        .iter()
        .find(|h| !h.starts_with("*."))
        .cloned()
        .unwrap_or_else(|| {
            HostPort {
                host: inst.address.host.clone(),
                port: Some(port),
            }
            .to_string()
        });
    Some(Probe {
        kind: check.kind.clone(),
        pass: Pass::Success,
        h2: false,
        host: inst.address.host.clone(),
        port,
        authority,
        timeout: check.timeout,
    })
}

/// Which statuses pass an HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pass {
    /// A `2xx` (the app's own checks).
    Success,
    /// Any status but these, and the body is not read (the outlier probe of an app without a
    /// check: any answer but a gateway error is an answer, as for a client's request).
    AnyBut(Vec<u16>),
}

impl Pass {
    fn passes(&self, status: StatusCode) -> bool {
        match self {
            Pass::Success => status.is_success(),
            Pass::AnyBut(failing) => !failing.contains(&status.as_u16()),
        }
    }
}

/// Where and how to check one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) kind: CheckKind,
    /// What an HTTP probe's status must be.
    pub(crate) pass: Pass,
    /// Speak HTTP/2 with prior knowledge (an instance whose service has `h2_backend`).
    pub(crate) h2: bool,
    /// Where to connect.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `Host` header of HTTP checks.
    pub(crate) authority: String,
    pub(crate) timeout: Duration,
}

impl Probe {
    /// Run once: `Ok` is a pass.
    pub(crate) async fn run(&self, resolver: &Resolver) -> Result<(), ProbeFailure> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.run_unbounded(resolver))
            .await
            .map_err(|_| ProbeFailure::Timeout { timeout })?
    }

    async fn run_unbounded(&self, resolver: &Resolver) -> Result<(), ProbeFailure> {
        let request = match &self.kind {
            CheckKind::Tcp => None,
            CheckKind::Http { path } => Some(request(path, &self.authority)?),
        };
        let stream = connect_one(&self.host, self.port, self.timeout, resolver)
            .await
            .map_err(|e| match e {
                AttemptError::Timeout { .. } => ProbeFailure::Timeout {
                    timeout: self.timeout,
                },
                e => ProbeFailure::Connect(e),
            })?;
        match request {
            None => Ok(()),
            Some(request) if self.h2 => h2_get(stream, request, &self.pass).await,
            Some(request) => http_get(stream, request, &self.pass).await,
        }
    }
}

fn request(path: &str, authority: &str) -> Result<Request<Empty<Bytes>>, ProbeFailure> {
    Request::get(path)
        .header(HOST, authority)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|source| ProbeFailure::Request {
            path: path.to_string(),
            source,
        })
}

/// `GET path` with `Connection: close`; `pass` judges the status. The body of a 2xx is read
/// (up to [`BODY_LIMIT`]) so the instance sees an orderly exchange, then dropped with the
/// connection.
async fn http_get(
    stream: TcpStream,
    req: Request<Empty<Bytes>>,
    pass: &Pass,
) -> Result<(), ProbeFailure> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProbeFailure::Http)?;
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if status.is_success() {
            discard(resp.into_body()).await?;
        }
        Ok::<_, hyper::Error>(status)
    };
    // The connection is driven here, not spawned, so nothing outlives the check's timeout.
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    let status = tokio::select! {
        r = &mut exchange => r,
        r = &mut conn => match r {
            // Closed cleanly: whatever it delivered is still readable.
            Ok(()) => exchange.await,
            Err(e) => Err(e),
        },
    }
    .map_err(ProbeFailure::Http)?;
    judge(status, pass)
}

fn judge(status: StatusCode, pass: &Pass) -> Result<(), ProbeFailure> {
    if pass.passes(status) {
        Ok(())
    } else {
        Err(ProbeFailure::Status { status })
    }
}

/// `GET path` over HTTP/2 with prior knowledge (h2c); `pass` judges the status, the body is
/// not read.
async fn h2_get(
    stream: TcpStream,
    req: Request<Empty<Bytes>>,
    pass: &Pass,
) -> Result<(), ProbeFailure> {
    // HTTP/2 names the target in `:scheme` and `:authority`, not in `Host` and `Connection`.
    let mut req = req;
    let authority = req.headers_mut().remove(HOST);
    req.headers_mut().remove(CONNECTION);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let authority = authority
        .as_ref()
        .and_then(|a| a.to_str().ok())
        .unwrap_or("localhost");
    let uri = format!("http://{authority}{path}");
    *req.uri_mut() = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| ProbeFailure::Request {
            path: path.to_string(),
            source: e.into(),
        })?;
    *req.version_mut() = http::Version::HTTP_2;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(ProbeFailure::Http)?;
    let mut conn = std::pin::pin!(conn);
    let exchange = sender.send_request(req);
    let mut exchange = std::pin::pin!(exchange);
    let resp = tokio::select! {
        r = &mut exchange => r,
        r = &mut conn => match r {
            Ok(()) => exchange.await,
            Err(e) => Err(e),
        },
    }
    .map_err(ProbeFailure::Http)?;
    judge(resp.status(), pass)
}

/// Read and drop up to [`BODY_LIMIT`] bytes of body; a body cut short is an error.
async fn discard(mut body: Incoming) -> Result<(), hyper::Error> {
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            read += data.len();
            if read > BODY_LIMIT {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot server that answers `response` to the first request and returns what it read.
    async fn server(response: &'static [u8]) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf[len..]).await.expect("read");
                if n == 0 {
                    break;
                }
                len += n;
            }
            s.write_all(response).await.expect("write");
            let _ = s.shutdown().await;
            String::from_utf8_lossy(&buf[..len]).into_owned()
        });
        (port, task)
    }

    fn probe(kind: CheckKind, port: u16) -> Probe {
        Probe {
            kind,
            pass: Pass::Success,
            h2: false,
            host: "127.0.0.1".into(),
            port,
            authority: "app.test".into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn http(path: &str) -> CheckKind {
        CheckKind::Http { path: path.into() }
    }

    #[tokio::test]
    async fn health_http_check_sends_host_agent_close_and_reads_chunked_bodies() {
        let (port, seen) =
            server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .await;
        let r = probe(http("/healthz?deep=1"), port)
            .run(&Resolver::default())
            .await;
        assert!(r.is_ok(), "{r:?}");
        let request = seen.await.expect("server").to_ascii_lowercase();
        assert!(
            request.starts_with("get /healthz?deep=1 http/1.1\r\n"),
            "{request}"
        );
        for header in [
            "host: app.test\r\n",
            "user-agent: anyedge-health\r\n",
            "connection: close\r\n",
        ] {
            assert!(request.contains(header), "{header} in {request}");
        }
    }

    #[tokio::test]
    async fn health_http_check_fails_on_other_statuses_and_garbage() {
        let (port, _seen) =
            server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let r = probe(http("/"), port).run(&Resolver::default()).await;
        assert!(
            matches!(r, Err(ProbeFailure::Status { status }) if status == 503),
            "{r:?}"
        );
        let (port, _seen) = server(b"HTTP/1.1 301 Moved\r\nContent-Length: 0\r\n\r\n").await;
        let r = probe(http("/"), port).run(&Resolver::default()).await;
        assert!(matches!(r, Err(ProbeFailure::Status { .. })), "{r:?}");
        let (port, _seen) = server(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let r = probe(http("/"), port).run(&Resolver::default()).await;
        assert!(matches!(r, Err(ProbeFailure::Http(_))), "{r:?}");
        let (port, _seen) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
        let r = probe(http("/"), port).run(&Resolver::default()).await;
        assert!(
            matches!(r, Err(ProbeFailure::Http(_))),
            "body cut short: {r:?}"
        );
    }

    /// The outlier probe of an app without a check: any status but a gateway error passes.
    #[tokio::test]
    async fn an_outlier_probe_passes_any_status_but_gateway_errors() {
        let any_but = |port| Probe {
            pass: Pass::AnyBut(vec![502, 503, 504]),
            ..probe(http("/"), port)
        };
        let (port, _seen) = server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        let r = any_but(port).run(&Resolver::default()).await;
        assert!(r.is_ok(), "{r:?}");
        let (port, _seen) =
            server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let r = any_but(port).run(&Resolver::default()).await;
        assert!(
            matches!(r, Err(ProbeFailure::Status { status }) if status == 503),
            "{r:?}"
        );
    }

    /// An `h2_backend` instance is probed over HTTP/2 with prior knowledge, `:authority` set.
    #[tokio::test]
    async fn an_outlier_probe_speaks_h2c_to_an_h2_backend() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let tx = std::sync::Mutex::new(Some(tx));
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                if let Some(tx) = tx.lock().expect("lock").take() {
                    let _ = tx.send((req.version(), req.uri().to_string()));
                }
                async {
                    let resp = hyper::Response::builder()
                        .status(204)
                        .body(Empty::<Bytes>::new())
                        .expect("response");
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(TokioIo::new(s), service)
                .await;
        });
        let p = Probe {
            pass: Pass::AnyBut(vec![502, 503, 504]),
            h2: true,
            ..probe(http("/ping"), port)
        };
        let r = p.run(&Resolver::default()).await;
        assert!(r.is_ok(), "{r:?}");
        let (version, uri) = rx.await.expect("the instance saw the probe");
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(uri, "http://app.test/ping");
    }

    #[tokio::test]
    async fn health_check_times_out_on_a_silent_instance() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut p = probe(http("/"), port);
        p.timeout = Duration::from_millis(100);
        let r = p.run(&Resolver::default()).await;
        assert!(matches!(r, Err(ProbeFailure::Timeout { .. })), "{r:?}");
        // a TCP check only needs the connect (the backlog accepts it)
        assert!(probe(CheckKind::Tcp, port)
            .run(&Resolver::default())
            .await
            .is_ok());
        drop(listener);
        let r = probe(CheckKind::Tcp, port).run(&Resolver::default()).await;
        assert!(matches!(r, Err(ProbeFailure::Connect(_))), "{r:?}");
    }

    #[tokio::test]
    async fn health_check_with_an_unusable_path_fails_without_connecting() {
        // port 1 on loopback refuses: a connect attempt would fail differently
        let r = probe(http("/a b"), 1).run(&Resolver::default()).await;
        assert!(matches!(r, Err(ProbeFailure::Request { .. })), "{r:?}");
    }
}
