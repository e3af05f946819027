//! Protocol switches (WebSocket and other upgrades). An HTTP/1.1 `Upgrade` request goes to the
//! instance as it is; an HTTP/2 extended CONNECT (RFC 8441) becomes the HTTP/1.1 upgrade the
//! instance expects, and the instance's 101 becomes the client's 200. Once both sides have
//! switched, bytes are copied both ways for as long as the connection lives: no request
//! timeout applies.

use crate::instance::attempt::{Cause, Outcome};
use crate::instance::body::{ReqBody, RespBody, Slots, UpBody};
use crate::instance::headers::{self, RETRY_ELSEWHERE};
use crate::instance::pool::Sender;
use anyedge_backhaul::retry::RetryElsewhere;
use anyedge_telemetry::AppMetrics;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

pub(crate) enum Upgrade {
    None,
    /// HTTP/1.1 `Connection: upgrade` + `Upgrade: <protocol>`.
    Http1 {
        client: ClientSide,
    },
    /// HTTP/2 `CONNECT` with `:protocol`.
    Connect {
        client: ClientSide,
        protocol: String,
    },
}

/// A byte stream both ways: a switched client connection.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The client connection once the server that read the request has sent the switch's answer.
pub(crate) type Switched = Box<dyn Stream>;

/// Put in a request's extensions by our servers when the request asks for a protocol switch:
/// HTTP/1.1 hands the connection over once it has written a 101, HTTP/2 the stream once it has
/// sent the extended CONNECT's 200.
#[derive(Clone)]
pub(crate) struct Handover(Arc<std::sync::Mutex<Option<oneshot::Receiver<Switched>>>>);

impl Handover {
    pub fn new() -> (Handover, oneshot::Sender<Switched>) {
        let (tx, rx) = oneshot::channel();
        (Handover(Arc::new(std::sync::Mutex::new(Some(rx)))), tx)
    }

    fn take(&self) -> Option<oneshot::Receiver<Switched>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The client's side of a switch: from hyper's server, or handed over by ours (HTTP/1.1 and
/// HTTP/2).
pub(crate) enum ClientSide {
    Hyper(OnUpgrade),
    Handed(oneshot::Receiver<Switched>),
}

impl ClientSide {
    fn of<B>(req: &mut Request<B>) -> ClientSide {
        match req
            .extensions_mut()
            .remove::<Handover>()
            .and_then(|h| h.take())
        {
            Some(rx) => ClientSide::Handed(rx),
            None => ClientSide::Hyper(hyper::upgrade::on(req)),
        }
    }

    /// The client's connection, once its server has switched it.
    async fn stream(self) -> Result<Switched, String> {
        match self {
            ClientSide::Hyper(on) => match on.await {
                Ok(u) => Ok(Box::new(TokioIo::new(u))),
                Err(e) => Err(e.to_string()),
            },
            ClientSide::Handed(rx) => rx
                .await
                .map_err(|_| "the client connection was not handed over".to_string()),
        }
    }
}

/// Tell a protocol switch from a plain request, and take the client side's upgrade handle.
pub(crate) fn classify<B>(req: &mut Request<B>) -> Result<Upgrade, &'static str> {
    if req.method() == Method::CONNECT {
        // `:protocol`, as our HTTP/2 server (`h2`) or hyper's hands it over.
        let ext = req.extensions();
        let protocol = ext
            .get::<h2::ext::Protocol>()
            .map(|p| p.as_str().to_string())
            .or_else(|| {
                ext.get::<hyper::ext::Protocol>()
                    .map(|p| p.as_str().to_string())
            });
        return match protocol {
            Some(protocol) => Ok(Upgrade::Connect {
                client: ClientSide::of(req),
                protocol,
            }),
            None => Err("CONNECT is only supported with :protocol (RFC 8441)"),
        };
    }
    let wants_upgrade = req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
    Ok(if wants_upgrade {
        Upgrade::Http1 {
            client: ClientSide::of(req),
        }
    } else {
        Upgrade::None
    })
}

/// Which leg of the path a switch is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leg {
    /// From the client's edge straight to the instance (HTTP/1.1 upgrade).
    Direct,
    /// From the edge to the worker running the instance: an HTTP/2 extended CONNECT on
    /// backhaul, whatever the client sent.
    ToWorker,
    /// On the worker, for an edge's extended CONNECT: to the instance as an HTTP/1.1 upgrade;
    /// the instance's answer headers go back whole (the edge answers its client).
    FromEdge,
}

/// A switch's answer, with what the request did.
pub(crate) type Answered = Result<(Response<RespBody>, Outcome), (SwitchFailed, Outcome)>;

/// What became of a switch.
pub(crate) enum Forwarded {
    /// Switched, or answered (by the instance or with an error).
    Answer(Box<Answered>),
    /// The worker refused before the instance saw it (`anyedge-retry-elsewhere`): everything
    /// needed to place the switch again.
    Refused {
        upgrade: Upgrade,
        outcome: Outcome,
        slots: Slots,
        reason: RetryElsewhere,
    },
}

/// Why a switch was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SwitchFailed {
    /// Called for a request that asks for no switch.
    #[error("not an upgrade")]
    NotAnUpgrade,
    #[error(transparent)]
    Cause(Box<Cause>),
}

/// The app a switch belongs to: its name (for the tunnel's log lines) and its metrics.
#[derive(Clone, Copy)]
pub(crate) struct AppRef<'a> {
    pub name: &'a Arc<str>,
    pub metrics: &'a Arc<AppMetrics>,
}

/// Send the switch to the instance (or its worker) on its own stream or connection, and tunnel
/// once both sides agree.
pub(crate) async fn forward(
    upgrade: Upgrade,
    sender: Sender,
    req: Request<ReqBody>,
    app: AppRef<'_>,
    outcome: Outcome,
    slots: Slots,
    leg: Leg,
) -> Forwarded {
    let (client, h2_client, protocol) = match upgrade {
        Upgrade::None => {
            return Forwarded::Answer(Box::new(Err((SwitchFailed::NotAnUpgrade, outcome))))
        }
        Upgrade::Http1 { client } => {
            let protocol = req
                .headers()
                .get(UPGRADE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("websocket")
                .to_string();
            (client, false, protocol)
        }
        Upgrade::Connect { client, protocol } => (client, true, protocol),
    };
    let resp = match send(sender, req, leg, h2_client, &protocol).await {
        Ok(r) => r,
        Err(e) => {
            let failed = SwitchFailed::Cause(Box::new(Cause::Instance(e)));
            return Forwarded::Answer(Box::new(Err((failed, outcome))));
        }
    };
    if leg == Leg::ToWorker {
        if let Some(why) = resp.headers().get(RETRY_ELSEWHERE) {
            let reason = RetryElsewhere::parse_bytes(why.as_bytes());
            let upgrade = if h2_client {
                Upgrade::Connect { client, protocol }
            } else {
                Upgrade::Http1 { client }
            };
            return Forwarded::Refused {
                upgrade,
                outcome,
                slots,
                reason,
            };
        }
    }
    Forwarded::Answer(Box::new(tunnel(
        resp, client, h2_client, &protocol, app, outcome, slots, leg,
    )))
}

/// Send the switch request, rewritten for the leg it goes on.
async fn send(
    sender: Sender,
    mut req: Request<ReqBody>,
    leg: Leg,
    h2_client: bool,
    protocol: &str,
) -> Result<Response<hyper::body::Incoming>, crate::instance::pool::Failure> {
    if leg == Leg::ToWorker {
        http1_to_connect(&mut req, protocol);
    } else if h2_client {
        connect_to_http1(&mut req, protocol);
    }
    sender.send_once(req).await
}

/// Once the other side answered: tunnel if it switched, else pass its answer on.
#[allow(clippy::too_many_arguments)]
fn tunnel(
    mut resp: Response<hyper::body::Incoming>,
    client: ClientSide,
    h2_client: bool,
    protocol: &str,
    app: AppRef<'_>,
    outcome: Outcome,
    slots: Slots,
    leg: Leg,
) -> Result<(Response<RespBody>, Outcome), (SwitchFailed, Outcome)> {
    let switched = match leg {
        Leg::ToWorker => resp.status() == StatusCode::OK,
        Leg::Direct | Leg::FromEdge => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
    };
    if !switched {
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let mut body = RespBody::upstream(UpBody::Hyper(body), app.metrics.clone());
        body.hold(slots);
        return Ok((Response::from_parts(parts, body), outcome));
    }
    let instance = hyper::upgrade::on(&mut resp);
    let app_name = app.name.clone();
    tokio::spawn(async move {
        // The tunnel holds its in-flight slots until it closes.
        let _slots = slots;
        let instance = async { instance.await.map_err(|e| e.to_string()) };
        match tokio::try_join!(client.stream(), instance) {
            Ok((mut c, i)) => {
                let mut i = TokioIo::new(i);
                match tokio::io::copy_bidirectional(&mut c, &mut i).await {
                    Ok((up, down)) => {
                        tracing::debug!(app = %app_name, up, down, "upgraded connection closed")
                    }
                    Err(e) => {
                        tracing::debug!(app = %app_name, error = %e, "upgraded connection ended")
                    }
                }
            }
            Err(e) => {
                tracing::info!(app = %app_name, error = %e, "protocol switch did not complete")
            }
        }
    });
    let (mut parts, _) = resp.into_parts();
    if leg == Leg::FromEdge {
        // To the edge: a CONNECT tunnel opens with 200; the instance's headers (its
        // Sec-WebSocket-Accept among them) are the edge's to answer its client with.
        parts.status = StatusCode::OK;
        headers::strip_hop_by_hop(&mut parts.headers, false);
    } else if h2_client {
        // RFC 8441: the tunnel opens with 200; HTTP/2 has no Upgrade or Connection headers.
        parts.status = StatusCode::OK;
        headers::strip_hop_by_hop(&mut parts.headers, false);
        parts.headers.remove("sec-websocket-accept");
    } else if leg == Leg::ToWorker {
        // An HTTP/1.1 client gets the 101 its upgrade asked for.
        parts.status = StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(&mut parts.headers, false);
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(p) = HeaderValue::try_from(protocol) {
            parts.headers.insert(UPGRADE, p);
        }
    } else {
        headers::strip_hop_by_hop(&mut parts.headers, true);
    }
    Ok((Response::from_parts(parts, RespBody::empty()), outcome))
}

/// Turn a switch into the extended CONNECT (RFC 8441) that carries it over HTTP/2 backhaul.
fn http1_to_connect(req: &mut Request<ReqBody>, protocol: &str) {
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = Version::HTTP_2;
    req.headers_mut().remove(UPGRADE);
    req.headers_mut().remove(CONNECTION);
    req.extensions_mut().insert(hyper::ext::Protocol::from(
        protocol.to_ascii_lowercase().as_str(),
    ));
}

/// Rewrite an extended CONNECT into the HTTP/1.1 upgrade request an instance understands.
fn connect_to_http1(req: &mut Request<ReqBody>, protocol: &str) {
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    if let Ok(p) = HeaderValue::try_from(protocol) {
        h.insert(UPGRADE, p);
    }
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if protocol.eq_ignore_ascii_case("websocket") && !h.contains_key("sec-websocket-key") {
        // RFC 8441 has no key; the instance needs one (RFC 6455), and nobody checks its answer.
        // (A request from an edge over backhaul carries its HTTP/1.1 client's key: kept.)
        let key: [u8; 16] = rand::random();
        if let Ok(v) = HeaderValue::try_from(base64(&key)) {
            h.insert("sec-websocket-key", v);
        }
        if !h.contains_key("sec-websocket-version") {
            h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64(&[0u8; 16]).len(), 24);
    }
}
