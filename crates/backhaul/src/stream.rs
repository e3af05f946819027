//! What an HTTP/2 backhaul stream carries besides the request: the one metadata header naming
//! its target and client ([`STREAM`]), the marker of the load-feed stream ([`FEED`]), and the
//! header of a worker's refusal ([`RETRY_ELSEWHERE`], its values in [`crate::retry`]).
//!
//! # The stream header
//!
//! ```text
//! anyedge-backhaul: <app> <instance> <client ip> <edge port> <http|https> <1.1|2>
//! ```
//!
//! Fields are separated by exactly one space (`' '`, never a tab or two spaces):
//!
//! - `app`, `instance`: the target app and the instance's id within it; at least one byte, no
//!   space. The writer ([`Target::new`]) also keeps them to visible ASCII or tab, so the value
//!   is always a valid header value and reads back through `HeaderValue::to_str`.
//! - `client ip`: the client's address as Rust's `IpAddr` writes and parses it (`192.0.2.7`,
//!   `2001:db8::7`, `::ffff:192.0.2.7`; no brackets, no zone).
//! - `edge port`: the port the client connected to at the edge, decimal, as `u16::from_str`
//!   reads it (so `+80` and `080` read as 80; the writer writes `80`).
//! - `http` or `https`: whether the client came over TLS.
//! - `1.1` or `2`: the HTTP version the client spoke.
//! - Anything after the sixth field (after one more space) is ignored, so that a later edge may
//!   add fields.
//!
//! The value is built from two parts: `<app> <instance> ` once per target ([`Target`]) and the
//! client once per request ([`Client::write`]). [`parse_stream`] reads it back; anything else
//! (a missing field, an empty name, an unknown scheme or version, a port past 65535, an address
//! `IpAddr` does not parse) is `None`, and the worker refuses the stream (`bad_request`).

use std::fmt::Write;
use std::net::IpAddr;

/// The stream metadata header (see the module docs). The worker removes it before forwarding.
pub const STREAM: &str = "anyedge-backhaul";
/// Marks the load-feed stream an edge opens on a backhaul connection (a `GET /`); the worker
/// looks only for the header's presence. Its value, as today's edges send it, is [`FEED_VALUE`].
pub const FEED: &str = "anyedge-backhaul-feed";
/// The value edges send in [`FEED`] for version 1 of the feed ([`crate::feed`], "Versions").
pub const FEED_VALUE: &str = "load";
/// The value edges send in [`FEED`] for version 2 (power states of driven instances).
pub const FEED_VALUE_V2: &str = "load 2";
/// Marks a start request (`docs/on-demand.md`, "Over backhaul"): a `GET /` stream whose only
/// content is this header, `<app> <instance>` ([`start_header`], [`parse_start`]). The worker
/// starts the instance with its driver (or joins the start under way) and answers when it is
/// ready (200) or the start failed (503 with `Retry-After`), within the app's
/// `start_timeout` and one second. A worker that predates it refuses the stream
/// (`bad_request`: it has no [`STREAM`] header), which the edge reads as a failed start.
pub const START: &str = "anyedge-backhaul-start";
/// Set on a worker's 503 when the instance did not get the request: the reason
/// ([`crate::retry::RetryElsewhere`]). The edge then places the request again without it.
pub const RETRY_ELSEWHERE: &str = "anyedge-retry-elsewhere";
/// Set on a worker's 504 (value `timeout`: no response head within `response_timeout`) or 502
/// (value `reset`: the instance's connection failed after the request was written): the request
/// reached the instance, so the edge may send it elsewhere only when that is safe (an idempotent
/// request whose body is kept, `[http] retry_on`). The worker removes this header and
/// [`RETRY_ELSEWHERE`] from every instance's response: only the worker sets them.
pub const FAILED: &str = "anyedge-backhaul-failed";

/// The client side of a request, as the stream header carries it: the worker writes the
/// forwarding headers (`X-Forwarded-*`, `<P>-Client-IP`, `Via`, ...) from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The client's address.
    pub ip: IpAddr,
    /// The edge port the client connected to.
    pub port: u16,
    /// Whether the client came over TLS.
    pub tls: bool,
    /// Whether the client spoke HTTP/2.
    pub http2: bool,
}

impl Client {
    /// The longest text [`Client::write`] writes: a full IPv6 address (39) and
    /// ` 65535 https 1.1` (16).
    pub const MAX_LEN: usize = 55;

    /// Append `<client ip> <edge port> <http|https> <1.1|2>` to `out`.
    pub fn write(self, out: &mut String) {
        write_ip(out, self.ip);
        out.push(' ');
        push_u32(out, u32::from(self.port));
        out.push_str(if self.tls { " https" } else { " http" });
        out.push_str(if self.http2 { " 2" } else { " 1.1" });
    }

    /// Read [`Client::write`]'s format; `None` if it is not that. Fields after the fourth are
    /// ignored, so that a later edge may add some.
    pub fn parse(text: &str) -> Option<Client> {
        let mut fields = text.split(' ');
        let ip = fields.next()?.parse().ok()?;
        let port = fields.next()?.parse().ok()?;
        let tls = match fields.next()? {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        let http2 = match fields.next()? {
            "1.1" => false,
            "2" => true,
            _ => return None,
        };
        Some(Client {
            ip,
            port,
            tls,
            http2,
        })
    }
}

/// The start of the stream header for one target, `<app> <instance> `, made once (per
/// snapshot) instead of once per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    prefix: String,
}

/// A name the stream header cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} name cannot go in the backhaul stream header: it must be 1 or more bytes of visible ASCII or tab, without spaces")]
pub struct BadName(pub &'static str);

impl Target {
    /// The prefix for `app` and `instance`; [`BadName`] for an empty name or one with a space
    /// or a byte a header value cannot carry as text (configured names never have one: they
    /// are letters, digits, `.`, `_` and `-`).
    pub fn new(app: &str, instance: &str) -> Result<Target, BadName> {
        check_name(app, "app")?;
        check_name(instance, "instance")?;
        let mut prefix = String::with_capacity(app.len() + instance.len() + 2);
        prefix.push_str(app);
        prefix.push(' ');
        prefix.push_str(instance);
        prefix.push(' ');
        Ok(Target { prefix })
    }

    /// `<app> <instance> `.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The whole header value for a request from `client`, in one allocation of the right size
    /// (`http::HeaderValue::try_from(String)` takes it without copying).
    pub fn header(&self, client: Client) -> String {
        let mut text = String::with_capacity(self.prefix.len() + Client::MAX_LEN);
        self.write(client, &mut text);
        text
    }

    /// Append the whole header value for a request from `client` to `out`.
    pub fn write(&self, client: Client, out: &mut String) {
        out.push_str(&self.prefix);
        client.write(out);
    }
}

fn check_name(name: &str, what: &'static str) -> Result<(), BadName> {
    let header_text = |b: u8| b == b'\t' || (b'!'..=b'~').contains(&b);
    if name.is_empty() || !name.bytes().all(header_text) {
        return Err(BadName(what));
    }
    Ok(())
}

/// The [`START`] header's value for `app`'s `instance`: `<app> <instance>`.
pub fn start_header(app: &str, instance: &str) -> String {
    let mut text = String::with_capacity(app.len() + instance.len() + 1);
    text.push_str(app);
    text.push(' ');
    text.push_str(instance);
    text
}

/// A [`START`] header read back: `(app, instance)`, neither empty nor holding a space; fields
/// after the second (after one more space) are ignored, so that a later edge may add some.
pub fn parse_start(text: &str) -> Option<(&str, &str)> {
    let (app, rest) = text.split_once(' ')?;
    let instance = rest.split_once(' ').map_or(rest, |(i, _)| i);
    if app.is_empty() || instance.is_empty() {
        return None;
    }
    Some((app, instance))
}

/// A stream header read back: `(app, instance, client)`, or `None` if it is not one (module
/// docs). The caller passes the header value as text (`HeaderValue::to_str`).
pub fn parse_stream(text: &str) -> Option<(&str, &str, Client)> {
    let (app, rest) = text.split_once(' ')?;
    let (instance, client) = rest.split_once(' ')?;
    if app.is_empty() || instance.is_empty() {
        return None;
    }
    Some((app, instance, Client::parse(client)?))
}

/// Append the address as `IpAddr`'s `Display` writes it; IPv4 (nearly every client) without
/// the formatting machinery, which cost a thousand instructions a request in a profile.
#[inline]
pub fn write_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let (text, n) = ipv4_text(v4);
            // ASCII digits and dots: always UTF-8.
            out.push_str(std::str::from_utf8(&text[..n]).unwrap_or_default());
        }
        IpAddr::V6(v6) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// [`write_ip`] into bytes (an HTTP/1.1 head being written).
#[inline]
pub fn write_ip_bytes(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let (text, n) = ipv4_text(v4);
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            // Writing to a Vec cannot fail.
            let _ = std::io::Write::write_fmt(out, format_args!("{v6}"));
        }
    }
}

/// Dotted decimal into a stack buffer: the text and its length.
#[inline]
fn ipv4_text(v4: std::net::Ipv4Addr) -> ([u8; 15], usize) {
    let mut text = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            text[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            text[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        text[n] = b'0' + octet % 10;
        n += 1;
    }
    (text, n)
}

/// Append `n` in decimal, without the formatting machinery.
pub(crate) fn push_u32(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8; // a digit, below 10
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str, port: u16, tls: bool, http2: bool) -> Client {
        Client {
            ip: ip.parse().expect("literal"),
            port,
            tls,
            http2,
        }
    }

    #[test]
    fn the_header_is_todays_bytes() {
        let target = Target::new("shop", "shop-1").expect("valid");
        assert_eq!(target.prefix(), "shop shop-1 ");
        let cases = [
            (
                client("127.0.0.7", 8080, false, false),
                "shop shop-1 127.0.0.7 8080 http 1.1",
            ),
            (
                client("203.0.113.200", 443, true, true),
                "shop shop-1 203.0.113.200 443 https 2",
            ),
            (
                client("2001:db8::7", 1, true, false),
                "shop shop-1 2001:db8::7 1 https 1.1",
            ),
            (
                client("::ffff:10.0.0.1", 0, false, true),
                "shop shop-1 ::ffff:10.0.0.1 0 http 2",
            ),
        ];
        for (c, want) in cases {
            assert_eq!(target.header(c), want);
            assert_eq!(parse_stream(want), Some(("shop", "shop-1", c)));
        }
    }

    #[test]
    fn numbers_and_addresses_are_written_as_std_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 255, 65535, 1_000_000, u32::MAX] {
            let mut out = String::new();
            push_u32(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "199.100.10.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut out = String::new();
            write_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
            let mut bytes = Vec::new();
            write_ip_bytes(&mut bytes, ip);
            assert_eq!(bytes, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn the_longest_client_fits_max_len() {
        let c = client(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            65535,
            true,
            false,
        );
        let mut out = String::new();
        c.write(&mut out);
        assert_eq!(out.len(), Client::MAX_LEN);
        let target = Target::new("a", "b").expect("valid");
        let header = target.header(c);
        assert_eq!(
            header.capacity(),
            header.len(),
            "sized exactly, never grown"
        );
    }

    #[test]
    fn what_todays_parser_accepts() {
        assert_eq!(
            Client::parse("127.0.0.1 80 http 1.1"),
            Some(client("127.0.0.1", 80, false, false))
        );
        // u16::from_str's leniency, kept.
        assert_eq!(
            Client::parse("127.0.0.1 +80 http 1.1").map(|c| c.port),
            Some(80)
        );
        assert_eq!(
            Client::parse("127.0.0.1 080 http 1.1").map(|c| c.port),
            Some(80)
        );
        // Fields a later edge may add are ignored, even empty ones.
        assert!(Client::parse("127.0.0.1 80 https 2 more").is_some());
        assert!(Client::parse("127.0.0.1 80 https 2 ").is_some());
        // Names are anything but a space.
        assert_eq!(
            parse_stream("a\tb ü/x 10.0.0.1 1 http 2").map(|(a, i, _)| (a, i)),
            Some(("a\tb", "ü/x"))
        );
    }

    #[test]
    fn every_rejection() {
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1 80",
            "127.0.0.1 80 http",
            "127.0.0.1 80 ftp 1.1",
            "127.0.0.1 80 HTTP 1.1",
            "127.0.0.1 80 http 3",
            "127.0.0.1 80 http 2.0",
            "127.0.0.1 70000 http 1.1",
            "127.0.0.1 -1 http 1.1",
            "127.0.0.1  80 http 1.1",
            "127.0.0.1\t80 http 1.1",
            "localhost 80 http 1.1",
            "[::1] 80 http 1.1",
            "fe80::1%2 80 http 1.1",
            "01.2.3.4 80 http 1.1",
            " 127.0.0.1 80 http 1.1",
        ] {
            assert_eq!(Client::parse(bad), None, "{bad:?}");
            assert_eq!(parse_stream(&format!("a i {bad}")), None, "{bad:?}");
        }
        for bad in [
            "",
            "app",
            "app inst",
            "app inst ",
            " inst 127.0.0.1 80 http 1.1",
            "app  127.0.0.1 80 http 1.1",
            "app inst  127.0.0.1 80 http 1.1",
        ] {
            assert_eq!(parse_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_names_are_refused_when_building() {
        assert_eq!(Target::new("", "i"), Err(BadName("app")));
        assert_eq!(Target::new("a b", "i"), Err(BadName("app")));
        assert_eq!(Target::new("a", ""), Err(BadName("instance")));
        assert_eq!(Target::new("a", "i\n"), Err(BadName("instance")));
        assert_eq!(Target::new("a", "ü"), Err(BadName("instance")));
        assert_eq!(Target::new("a", "\x7f"), Err(BadName("instance")));
        assert!(Target::new("a.b_c-1", "i\t/~!").is_ok());
    }
}
