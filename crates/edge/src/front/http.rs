//! The client-facing HTTP server: HTTP/1.1 and HTTP/2 (h2c with prior knowledge on plain ports, ALPN on TLS
//! ports) from clients, many apps on one port routed by host, forwarded to instances.

mod attempts;
mod carrier;
pub(crate) mod routing;
mod service;

use super::http1;
use super::tcp::Guards;
use crate::instance::headers::ClientInfo;
use crate::routes::Routes;
use crate::{h2server, Shared};
pub(crate) use service::ProxyService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve one accepted client connection on an HTTP port, in a task of its own, until it
/// closes. Each request is routed on the routes current when its head arrives (`service.rs`),
/// not on those of the accept.
pub(crate) fn spawn(
    stream: TcpStream,
    client: ClientInfo,
    guards: Guards,
    routes: &Routes,
    shared: &Arc<Shared>,
) {
    if client.tls {
        tokio::spawn(serve_tls(stream, client, guards, shared.clone()));
        return;
    }
    let service = ProxyService::new(shared.clone(), Arc::new(client), routes.http.clone(), None);
    tokio::spawn(serve_plain(stream, service, guards));
}

/// A client connection on a plain port: HTTP/1.1, or HTTP/2 with prior knowledge (boxed) when it
/// opens with the preface; both our servers.
///
/// This future is the connection's task, so its size is memory every idle connection holds.
/// Hence a plain function returning an `async` block that uses what it captures in place: an
/// `async fn` would keep its arguments and the copies it moves them into, and the HTTP/1.1
/// server takes the connection by reference for the same reason.
fn serve_plain(
    stream: TcpStream,
    service: ProxyService,
    guards: Guards,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut conn = http1::Conn {
        io: stream,
        buf: http1::ReadBuffer::default(),
    };
    async move {
        let _guards = &guards;
        let timeout = service.settings().config.header_read_timeout;
        // Boxed: this state is only needed until the first read.
        match Box::pin(sniff_h2c(&mut conn, timeout)).await {
            None => return,
            Some(true) => {
                // The HTTP/2 server reads the preface again.
                let io = http1::Rewind::new(conn.buf.take_unread(), conn.io);
                return Box::pin(serve_io(io, service.clone(), &service.shared)).await;
            }
            Some(false) => {}
        }
        let ending = http1::serve(&mut conn, &service).await;
        Box::pin(conn.close(ending)).await;
    }
}

/// A client connection on a TLS port: the handshake, then HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve_tls(stream: TcpStream, client: ClientInfo, _guards: Guards, shared: Arc<Shared>) {
    let (settings, tls) = {
        let routes = shared.routes.load();
        (routes.http.clone(), routes.tls.clone())
    };
    let Some(tls) = tls else { return };
    let admit = |sni: Option<&str>| access_before_handshake(&shared, &client, sni);
    let accepting = tls.accept_filtered(stream, &shared.handshakes, admit);
    let accepted = match Box::pin(accepting).await {
        Ok(a) => a,
        Err(anyedge_tls::TlsError::Refused { sni }) => {
            tracing::debug!(sni, client = %client.peer, "TLS connection refused by the app's access rules");
            return;
        }
        Err(e) => {
            shared
                .metrics
                .node
                .rejection(anyedge_telemetry::ErrorCode::TlsHandshake);
            tracing::info!(code = e.code(), client = %client.peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    if accepted.alpn.as_deref() == Some(anyedge_tls::ALPN_ACME_TLS) {
        // A TLS-ALPN-01 validation connection: the handshake was the answer (RFC 8737);
        // nothing is served on it.
        tracing::info!(sni = accepted.sni.as_deref(), client = %client.peer, "ACME validation handshake answered");
        let mut stream = accepted.stream;
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::io::AsyncWriteExt::shutdown(&mut stream),
        )
        .await;
        return;
    }
    let h2 = accepted.alpn.as_deref() == Some(anyedge_tls::ALPN_H2);
    let sni = accepted.sni.map(Arc::<str>::from);
    let service = ProxyService::new(shared.clone(), Arc::new(client), settings, sni);
    // Boxed: the task of an idle connection holds only the branch it took, not the size
    // of the largest (memory per idle connection).
    if h2 {
        Box::pin(serve_io(accepted.stream, service, &shared)).await;
    } else {
        let mut conn = http1::Conn {
            io: accepted.stream,
            buf: http1::ReadBuffer::default(),
        };
        let ending = Box::pin(http1::serve(&mut conn, &service)).await;
        Box::pin(conn.close(ending)).await;
    }
}

/// Does the client open with the HTTP/2 preface? The first read decides (no peek): the bytes
/// read stay in the connection's buffer for whichever server takes it. `None` when the
/// client closed or sent nothing in time.
async fn sniff_h2c(conn: &mut http1::Conn<TcpStream>, timeout: Duration) -> Option<bool> {
    let deadline = Instant::now() + timeout;
    tokio::time::timeout_at(deadline.into(), conn.io.readable())
        .await
        .ok()?
        .ok()?;
    loop {
        let spare = conn.buf.spare(H2_PREFACE.len());
        let n = tokio::time::timeout_at(
            deadline.into(),
            tokio::io::AsyncReadExt::read(&mut conn.io, spare),
        )
        .await
        .ok()?
        .ok()?;
        if n == 0 {
            return None;
        }
        conn.buf.filled(n);
        let got = conn.buf.unread();
        let n = got.len().min(H2_PREFACE.len());
        if got[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
    }
}

/// Serve HTTP/2 on `io` with our server (`crate::h2server`): each stream's request goes to the
/// forwarding core as our HTTP/1.1 server's do; on drain, or once the connection has had no
/// stream for its idle timeout, in-flight requests finish and the connection closes gracefully.
pub(crate) async fn serve_io<IO>(io: IO, service: ProxyService, shared: &Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let settings = h2_settings(&service.settings().config);
    let answer = |req| {
        let (this, routed) = service.for_request(&req);
        this.handle(req, routed)
    };
    match h2server::serve(io, &settings, shared.drain.started(), answer).await {
        Ok(()) => {}
        // A client that broke the protocol (a flood of resets, a malformed frame): its fault,
        // counted as such, never an instance's.
        Err(e) if e.is_peer_protocol_error() => {
            let code = anyedge_telemetry::ErrorCode::BadRequest;
            shared.metrics.node.rejection(code);
            tracing::info!(code = code.as_str(), error = %e, "HTTP/2 client connection closed for a protocol error");
        }
        Err(e) => tracing::debug!(error = %e, "client connection ended with an error"),
    }
}

/// The client-facing HTTP/2 protections, as they were on hyper's server: `[http]`'s stream cap,
/// header size and timeouts; at most 50 streams reset by the client before we took them (rapid
/// reset) and 1,024 we reset for its errors; a PING every 30 s, answered within 20 s.
fn h2_settings(cfg: &anyedge_config::Http) -> h2server::Settings {
    h2server::Settings {
        max_concurrent_streams: cfg.h2_max_concurrent_streams,
        max_header_list_size: u32::try_from(cfg.max_header_size).unwrap_or(u32::MAX),
        max_pending_accept_reset_streams: 50,
        max_local_error_reset_streams: h2server::DEFAULT_LOCAL_ERROR_RESETS,
        stream_window: h2server::DEFAULT_WINDOW,
        connection_window: h2server::DEFAULT_WINDOW,
        max_send_buffer: h2server::DEFAULT_SEND_BUFFER,
        ping_interval: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(20),
        idle: Some((cfg.header_read_timeout, cfg.idle_timeout)),
    }
}

/// The access rules of the app a TLS ClientHello names, checked before the handshake: a
/// refused client is closed without a certificate signature's worth of work. A name no app
/// serves here, or none, goes on (the handshake or the request refuses it).
fn access_before_handshake(shared: &Shared, client: &ClientInfo, sni: Option<&str>) -> bool {
    let Some(name) = sni else { return true };
    let routes = shared.routes.load();
    let Some(crate::routes::PortRoute::Http(port)) = routes.port(client.local) else {
        return true;
    };
    let Some(app) = port.app(name) else {
        return true;
    };
    let ip = client.peer.ip();
    match crate::policy::check_access_only(&app.app, app.service(), &app.metrics, ip) {
        Ok(()) => true,
        Err(refusal) => {
            app.metrics.error(refusal.code());
            false
        }
    }
}
