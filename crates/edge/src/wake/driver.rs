//! How an instance is started and stopped: the driver interface and its two implementations,
//! shell commands and a machines API over HTTP (`docs/on-demand.md`). A driver's start only
//! launches; readiness is judged afterwards by the instance's check or port (`super::task`).

use anyedge_config::Driver;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Output lines of one command logged at most (the rest are counted).
const LOG_LINES: usize = 50;
/// Bytes of one output line (or of an API's answer) logged at most.
const LOG_LINE_BYTES: usize = 1024;

/// What a driver acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub app: String,
    pub instance: String,
    /// `host:port` where it serves.
    pub address: String,
}

/// Start or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Start,
    Stop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
        }
    }
}

/// Why a driver's start or stop failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    #[error("the command could not be run: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the command exited with {0}")]
    Exit(std::process::ExitStatus),
    #[error("the machines API could not be reached: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the machines API exchange failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("the machines API URL is not usable: {0}")]
    Url(String),
    #[error("the instance's driver runs on the node that registered it, not here")]
    Elsewhere,
    #[error("the machines API answered {status}: {body}")]
    Status {
        status: http::StatusCode,
        body: String,
    },
}

/// Run `action` on `target` with `driver`. The caller bounds the time.
pub(crate) async fn run(
    driver: &Driver,
    action: Action,
    target: &Target,
) -> Result<(), DriverError> {
    match driver {
        Driver::Command { start, stop } => {
            let line = match action {
                Action::Start => start,
                Action::Stop => stop,
            };
            command(line, action, target).await
        }
        Driver::Http { url } => http(url, action, target).await,
        // Never given a task (`Driver::runnable`): the node that registered it runs it.
        Driver::Elsewhere => Err(DriverError::Elsewhere),
    }
}

/// `sh -c LINE` with the target in its environment; its output is logged line by line and
/// its exit status decides. A start command may launch the instance and return, or keep
/// running as the instance itself: readiness, not the exit, ends a start (`super::task`
/// runs the two side by side); the process is killed if the start is given up.
async fn command(line: &str, action: Action, target: &Target) -> Result<(), DriverError> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        .env("ANYEDGE_APP", &target.app)
        .env("ANYEDGE_INSTANCE", &target.instance)
        .env("ANYEDGE_ADDRESS", &target.address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(DriverError::Spawn)?;
    let pid = child.id();
    tracing::info!(app = %target.app, instance = %target.instance, action = action.as_str(), pid, command = %line, "driver command started");
    let out = child
        .stdout
        .take()
        .map(|o| log_lines(o, action, target, "stdout"));
    let err = child
        .stderr
        .take()
        .map(|e| log_lines(e, action, target, "stderr"));
    // The output is read beside the wait, so a chatty command never blocks on a full pipe.
    // Once it exits, its output is read only for a moment more: a process it left running
    // in the background may hold the pipes open.
    let status = child.wait().await.map_err(DriverError::Spawn)?;
    for reader in [out, err].into_iter().flatten() {
        // Left running (not aborted) past the moment: it ends when the pipe closes.
        let _ = tokio::time::timeout(Duration::from_millis(100), reader).await;
    }
    tracing::info!(app = %target.app, instance = %target.instance, action = action.as_str(), pid, %status, "driver command exited");
    if status.success() {
        Ok(())
    } else {
        Err(DriverError::Exit(status))
    }
}

/// Log each line of a command's output (the first [`LOG_LINES`], each cut at
/// [`LOG_LINE_BYTES`]); the rest are read and counted.
fn log_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    action: Action,
    target: &Target,
    which: &'static str,
) -> tokio::task::JoinHandle<()> {
    let (app, instance) = (target.app.clone(), target.instance.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).split(b'\n');
        let mut n = 0usize;
        while let Ok(Some(line)) = lines.next_segment().await {
            n += 1;
            if n <= LOG_LINES {
                let cut = &line[..line.len().min(LOG_LINE_BYTES)];
                let text = String::from_utf8_lossy(cut);
                tracing::info!(app = %app, instance = %instance, action = action.as_str(), stream = which, line = %text.trim_end(), "driver command output");
            }
        }
        if n > LOG_LINES {
            tracing::info!(app = %app, instance = %instance, action = action.as_str(), stream = which, lines = n, logged = LOG_LINES, "driver command output cut");
        }
    })
}

/// `POST <url>/start` or `<url>/stop` with `{"app", "instance", "address"}` as JSON; a 2xx
/// answer is success, anything else fails with the answer's status and (cut) body.
async fn http(url: &str, action: Action, target: &Target) -> Result<(), DriverError> {
    let (authority, path) = split_url(url).ok_or_else(|| DriverError::Url(url.to_string()))?;
    let path = format!("{path}/{}", action.as_str());
    let body = format!(
        "{{\"app\":{},\"instance\":{},\"address\":{}}}",
        json_string(&target.app),
        json_string(&target.instance),
        json_string(&target.address)
    );
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(DriverError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(DriverError::Http)?;
    let req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "anyedge-driver")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| DriverError::Url(e.to_string()))?;
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    let (status, body) = tokio::select! {
        r = &mut exchange => r,
        r = &mut conn => match r {
            Ok(()) => exchange.await,
            Err(e) => Err(e),
        },
    }
    .map_err(DriverError::Http)?;
    let text = String::from_utf8_lossy(&body[..body.len().min(LOG_LINE_BYTES)]).into_owned();
    tracing::info!(app = %target.app, instance = %target.instance, action = action.as_str(), %status, answer = %text, "machines API answered");
    if status.is_success() {
        Ok(())
    } else {
        Err(DriverError::Status { status, body: text })
    }
}

/// `http://authority/path` (validated by the config) to its authority and path (no trailing
/// slash).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Some((authority, path.trim_end_matches('/')))
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_strings_escape() {
        assert_eq!(
            split_url("http://127.0.0.1:4281/v1/machines/s-1"),
            Some(("127.0.0.1:4281", "/v1/machines/s-1"))
        );
        assert_eq!(split_url("http://api"), Some(("api", "")));
        assert_eq!(split_url("https://api/x"), None);
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
