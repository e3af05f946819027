//! The header that opens a raw-TCP backhaul connection (edge -> worker) and the worker's
//! one-shot reply; the wire format is in the crate docs ("TCP backhaul header").

use crate::retry::{Fault, RetryElsewhere};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

const MAGIC: &[u8; 4] = b"AEBH";
const VERSION: u8 = 1;

/// No header is longer than this; decoders never buffer more.
pub const MAX_HEADER_LEN: usize = 600;

/// Opens a raw-TCP backhaul connection (edge -> worker), right after the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpHeader {
    pub app: String,
    pub instance: String,
    pub client: SocketAddr,
    pub edge_port: u16,
}

/// A header or reply that cannot be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("the header is incomplete")]
    Incomplete,
    #[error("the header does not start with the backhaul magic")]
    BadMagic,
    #[error("unsupported backhaul header version {0}")]
    UnsupportedVersion(u8),
    #[error("bad client address family {0} (4 or 6)")]
    BadFamily(u8),
    #[error("bad {0} name (1 to 255 bytes of UTF-8, no control characters, no '/')")]
    BadName(&'static str),
    #[error("a name is longer than 255 bytes")]
    TooLong,
    #[error("unknown backhaul reply {0} {1}")]
    BadReply(u8, u8),
}

/// Reading a header or reply from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the backhaul header: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The peer closed the stream before a whole header (or reply) arrived.
    #[error("the peer closed the connection before the whole header")]
    Closed,
}

/// How far parsing got: the header, or how many bytes in all are needed to get further.
enum Step {
    Need(usize),
    Done(TcpHeader, usize),
}

impl TcpHeader {
    /// The header's bytes. Fails with `BadName` for an empty name or a forbidden character, and
    /// `TooLong` for a name over 255 bytes (both caller bugs: names come from the catalog).
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(4 + 1 + 2 + self.app.len() + self.instance.len() + 21);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_name(&mut out, &self.app, "app")?;
        put_name(&mut out, &self.instance, "instance")?;
        match self.client.ip() {
            IpAddr::V4(ip) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&self.client.port().to_be_bytes());
        out.extend_from_slice(&self.edge_port.to_be_bytes());
        Ok(out)
    }

    /// Decode from the start of `buf`: the header and the number of bytes it took, or
    /// `Incomplete` when more bytes are needed. Bytes after the header are not looked at.
    pub fn decode(buf: &[u8]) -> Result<(TcpHeader, usize), HeaderError> {
        match parse(buf)? {
            Step::Done(header, used) => Ok((header, used)),
            Step::Need(_) => Err(HeaderError::Incomplete),
        }
    }

    /// Read exactly one header from `r`: it never reads past the header's end, so the bytes
    /// after it stay in `r`. Each read asks for at most the bytes the next field needs, and
    /// what arrives is checked at once (garbage fails without waiting for more). No deadline of
    /// its own: the caller bounds it in time.
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<TcpHeader, ReadError> {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let mut have = 0;
        loop {
            match parse(&buf[..have])? {
                Step::Done(header, _) => return Ok(header),
                Step::Need(total) => {
                    // parse never asks for more than a whole header, which fits the buffer.
                    let want = buf.get_mut(have..total).ok_or(HeaderError::TooLong)?;
                    match r.read(want).await? {
                        0 => return Err(ReadError::Closed),
                        n => have += n,
                    }
                }
            }
        }
    }
}

fn put_name(out: &mut Vec<u8>, name: &str, what: &'static str) -> Result<(), HeaderError> {
    if name.len() > 255 {
        return Err(HeaderError::TooLong);
    }
    if !valid_name(name) {
        return Err(HeaderError::BadName(what));
    }
    out.push(name.len() as u8); // at most 255, checked above
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.chars().any(|c| c.is_control() || c == '/')
}

/// Parse as much of a header as `buf` holds, checking each field as soon as it is whole.
fn parse(buf: &[u8]) -> Result<Step, HeaderError> {
    let magic_seen = buf.len().min(MAGIC.len());
    if buf[..magic_seen] != MAGIC[..magic_seen] {
        return Err(HeaderError::BadMagic);
    }
    let mut at = MAGIC.len();
    let Some(&version) = buf.get(at) else {
        return Ok(Step::Need(at + 2));
    };
    if version != VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    at += 1;
    let app = match name(buf, &mut at, "app")? {
        Ok(app) => app,
        Err(need) => return Ok(Step::Need(need)),
    };
    let instance = match name(buf, &mut at, "instance")? {
        Ok(instance) => instance,
        Err(need) => return Ok(Step::Need(need)),
    };
    let Some(&family) = buf.get(at) else {
        return Ok(Step::Need(at + 1));
    };
    let addr_len = match family {
        4 => 4,
        6 => 16,
        other => return Err(HeaderError::BadFamily(other)),
    };
    at += 1;
    let end = at + addr_len + 4;
    let Some(rest) = buf.get(at..end) else {
        return Ok(Step::Need(end));
    };
    let (addr, ports) = rest.split_at(addr_len);
    let ip = match <[u8; 16]>::try_from(addr) {
        Ok(v6) => IpAddr::V6(Ipv6Addr::from(v6)),
        Err(_) => {
            let v4 = <[u8; 4]>::try_from(addr).map_err(|_| HeaderError::BadFamily(family))?;
            IpAddr::V4(Ipv4Addr::from(v4))
        }
    };
    let header = TcpHeader {
        app,
        instance,
        client: SocketAddr::new(ip, u16::from_be_bytes([ports[0], ports[1]])),
        edge_port: u16::from_be_bytes([ports[2], ports[3]]),
    };
    Ok(Step::Done(header, end))
}

/// A length-prefixed name at `*at`: the name (and `*at` moved past it), or the total number of
/// bytes needed to read it (inner `Err`).
fn name(
    buf: &[u8],
    at: &mut usize,
    what: &'static str,
) -> Result<Result<String, usize>, HeaderError> {
    let Some(&len) = buf.get(*at) else {
        return Ok(Err(*at + 1));
    };
    if len == 0 {
        return Err(HeaderError::BadName(what));
    }
    let start = *at + 1;
    // One more than the name: the next field's first byte is needed to get further anyway.
    let end = start + usize::from(len);
    let Some(bytes) = buf.get(start..end) else {
        return Ok(Err(end + 1));
    };
    let text = std::str::from_utf8(bytes).map_err(|_| HeaderError::BadName(what))?;
    if !valid_name(text) {
        return Err(HeaderError::BadName(what));
    }
    *at = end;
    Ok(Ok(text.to_owned()))
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), ReadError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReadError::Closed),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// The worker's one-shot answer after the header: connected (bytes flow next) or refused with
/// a reason, sent before any client byte is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpReply {
    Connected,
    Refused(RefuseReason),
}

/// Why a worker refused a raw-TCP backhaul connection. An HTTP stream's refusal can carry these
/// and a few more: [`RetryElsewhere`] (`From<RefuseReason>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    UnknownInstance,
    WrongApp,
    Unhealthy,
    Full,
    AppOverloaded,
    ConnectFailed,
    BadHeader,
    Draining,
    NoService,
}

impl RefuseReason {
    /// Every reason, in wire-code order (code = index + 1).
    pub const ALL: [RefuseReason; 9] = [
        RefuseReason::UnknownInstance,
        RefuseReason::WrongApp,
        RefuseReason::Unhealthy,
        RefuseReason::Full,
        RefuseReason::AppOverloaded,
        RefuseReason::ConnectFailed,
        RefuseReason::BadHeader,
        RefuseReason::Draining,
        RefuseReason::NoService,
    ];

    /// snake_case name, used as a metric label and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::UnknownInstance => "unknown_instance",
            RefuseReason::WrongApp => "wrong_app",
            RefuseReason::Unhealthy => "unhealthy",
            RefuseReason::Full => "full",
            RefuseReason::AppOverloaded => "app_overloaded",
            RefuseReason::ConnectFailed => "connect_failed",
            RefuseReason::BadHeader => "bad_header",
            RefuseReason::Draining => "draining",
            RefuseReason::NoService => "no_service",
        }
    }

    /// Whether the edge puts the instance into connect backoff after this refusal
    /// ([`RetryElsewhere::backs_off`]: every reason but `full` and `app_overloaded`).
    pub fn backs_off(self) -> bool {
        RetryElsewhere::from(self).backs_off()
    }

    /// Whose fault the refusal is ([`RetryElsewhere::fault`]).
    pub fn fault(self) -> Fault {
        RetryElsewhere::from(self).fault()
    }

    fn code(self) -> u8 {
        match self {
            RefuseReason::UnknownInstance => 1,
            RefuseReason::WrongApp => 2,
            RefuseReason::Unhealthy => 3,
            RefuseReason::Full => 4,
            RefuseReason::AppOverloaded => 5,
            RefuseReason::ConnectFailed => 6,
            RefuseReason::BadHeader => 7,
            RefuseReason::Draining => 8,
            RefuseReason::NoService => 9,
        }
    }

    fn from_code(code: u8) -> Option<RefuseReason> {
        RefuseReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TcpReply {
    pub fn encode(self) -> [u8; 2] {
        match self {
            TcpReply::Connected => [0, 0],
            TcpReply::Refused(reason) => [1, reason.code()],
        }
    }

    /// `BadReply` for anything but `[0, 0]` and `[1, known code]`.
    pub fn decode(b: [u8; 2]) -> Result<TcpReply, HeaderError> {
        match b {
            [0, 0] => Ok(TcpReply::Connected),
            [1, code] => RefuseReason::from_code(code)
                .map(TcpReply::Refused)
                .ok_or(HeaderError::BadReply(1, code)),
            [kind, code] => Err(HeaderError::BadReply(kind, code)),
        }
    }

    /// Read exactly the two reply bytes from `r`.
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<TcpReply, ReadError> {
        let mut b = [0u8; 2];
        read_exact(r, &mut b).await?;
        Ok(TcpReply::decode(b)?)
    }
}
