//! Request and response header rewriting: hop-by-hop removal, the forwarding headers DESIGN.md
//! promises (`X-Forwarded-*`, `Via`, `<P>-Client-IP`, ...), and request ids.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE,
};

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Header names that carry the configured prefix (`anyedge` or `fly`), built once per snapshot.
pub(crate) struct Prefixed {
    pub client_ip: HeaderName,
    pub forwarded_port: HeaderName,
    pub region: HeaderName,
    pub request_id: HeaderName,
    pub error: HeaderName,
    /// Only the proxy may set these on a request; a client's copies are removed.
    pub proxy_only: Vec<HeaderName>,
    pub prefer_region: HeaderName,
    pub force_region: HeaderName,
    pub prefer_instance_id: HeaderName,
    pub force_instance_id: HeaderName,
    pub debug: HeaderName,
    pub debug_token: HeaderName,
    pub preferred_instance_unavailable: HeaderName,
    pub route: HeaderName,
    pub replay: HeaderName,
    pub replay_src: HeaderName,
    pub replay_failed: HeaderName,
    /// `<prefix>-`, lower-cased: every name above starts with it.
    dash_prefix: String,
}

impl Prefixed {
    /// Whether any header name starts with `<prefix>-`: one pass over the names, far cheaper than
    /// looking up each prefixed name (custom names are hashed byte by byte), and most requests
    /// carry none.
    pub fn any_in(&self, headers: &HeaderMap) -> bool {
        let p = self.dash_prefix.as_bytes();
        headers.keys().any(|k| k.as_str().as_bytes().starts_with(p))
    }

    /// `<prefix>-`, lower-cased: the start of every name above.
    pub fn dash_prefix(&self) -> &[u8] {
        self.dash_prefix.as_bytes()
    }

    /// [`Self::any_in`] for a head kept as received.
    pub fn any_in_raw(&self, head: &super::http1::RawHead) -> bool {
        head.any_prefixed(self.dash_prefix.as_bytes())
    }

    pub fn new(prefix: &str) -> Prefixed {
        let name = |suffix: &str| {
            HeaderName::try_from(format!("{prefix}-{suffix}").to_ascii_lowercase())
                .unwrap_or_else(|_| HeaderName::from_static("anyedge-invalid-prefix"))
        };
        let proxy_only = [
            "client-ip",
            "forwarded-port",
            "region",
            "request-id",
            "replay-src",
            "replay-failed",
        ]
        .iter()
        .map(|s| name(s))
        .collect();
        Prefixed {
            client_ip: name("client-ip"),
            forwarded_port: name("forwarded-port"),
            region: name("region"),
            request_id: name("request-id"),
            error: name("error"),
            proxy_only,
            prefer_region: name("prefer-region"),
            force_region: name("force-region"),
            prefer_instance_id: name("prefer-instance-id"),
            force_instance_id: name("force-instance-id"),
            debug: name("debug"),
            debug_token: name("debug-token"),
            preferred_instance_unavailable: name("preferred-instance-unavailable"),
            route: name("route"),
            replay: name("replay"),
            replay_src: name("replay-src"),
            replay_failed: name("replay-failed"),
            dash_prefix: format!("{prefix}-").to_ascii_lowercase(),
        }
    }
}

// Which hop-by-hop headers a message carries, as bits.
const CONN: u8 = 1;
const TRANSFER: u8 = 2;
const TE_: u8 = 4;
const UPGRADE_: u8 = 8;
const KEEP_ALIVE: u8 = 16;
const PROXY_CONN: u8 = 32;

/// Remove hop-by-hop headers (RFC 9110 7.6.1) and those the `Connection` header names.
/// `keep_upgrade` leaves `Upgrade` and `Connection: upgrade` for a protocol switch.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let present = hop_by_hop_present(headers);
    if present & CONN != 0 {
        for n in connection_named(headers, keep_upgrade) {
            headers.remove(n);
        }
    }
    // `Trailer` stays: it is end-to-end (RFC 9110 6.6.2), and HTTP/1.1 peers send only the
    // trailers it announces.
    if present & TRANSFER != 0 {
        headers.remove(TRANSFER_ENCODING);
    }
    if present & KEEP_ALIVE != 0 {
        headers.remove(HeaderName::from_static("keep-alive"));
    }
    if present & PROXY_CONN != 0 {
        headers.remove(HeaderName::from_static("proxy-connection"));
    }
    if present & TE_ != 0 {
        // `TE: trailers` is the one TE value that must travel (gRPC needs it).
        let te_trailers = headers
            .get(TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        headers.remove(TE);
        if te_trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        if present & CONN != 0 {
            headers.remove(CONNECTION);
        }
        if present & UPGRADE_ != 0 {
            headers.remove(UPGRADE);
        }
    }
}

/// One pass over the names: most messages carry few of these, and a scan costs no hashing,
/// where a `remove` per candidate would (the hot path's profile showed it).
fn hop_by_hop_present(headers: &HeaderMap) -> u8 {
    let mut present = 0u8;
    for n in headers.keys() {
        present |= if n == CONNECTION {
            CONN
        } else if n == TRANSFER_ENCODING {
            TRANSFER
        } else if n == TE {
            TE_
        } else if n == UPGRADE {
            UPGRADE_
        } else if n.as_str() == "keep-alive" {
            KEEP_ALIVE
        } else if n.as_str() == "proxy-connection" {
            PROXY_CONN
        } else {
            0
        };
    }
    present
}

/// The header names `Connection` lists; `close` and `keep-alive` are options, not names of
/// headers this message could carry beyond `Keep-Alive` (removed on its own).
fn connection_named(headers: &HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            let option = t.is_empty()
                || t.eq_ignore_ascii_case("close")
                || t.eq_ignore_ascii_case("keep-alive")
                || (keep_upgrade && t.eq_ignore_ascii_case("upgrade"));
            !option
        })
        .filter_map(|t| HeaderName::try_from(t).ok())
        .collect()
}

/// The backhaul stream headers of `anyedge_backhaul::stream`, as header names, for both roles:
/// a stream's metadata (`<app> <instance> <client ...>`, which the worker removes and writes the
/// forwarding headers from), the mark of the load-feed stream, and a worker's answer that the
/// instance did not get the request.
pub(crate) const STREAM: HeaderName = HeaderName::from_static(anyedge_backhaul::stream::STREAM);
pub(crate) const FEED: HeaderName = HeaderName::from_static(anyedge_backhaul::stream::FEED);
pub(crate) const START: HeaderName = HeaderName::from_static(anyedge_backhaul::stream::START);
pub(crate) const RETRY_ELSEWHERE: HeaderName =
    HeaderName::from_static(anyedge_backhaul::stream::RETRY_ELSEWHERE);
/// [`anyedge_backhaul::stream::FAILED`].
pub(crate) const FAILED: HeaderName = HeaderName::from_static(anyedge_backhaul::stream::FAILED);

/// What the edge knows about the client connection a request came on.
pub(crate) struct ClientInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// The client side of a request as the forwarding headers tell it: made on the edge from the
/// client connection ([`forwarded`]). A request for an instance on another node carries it over
/// backhaul in its one metadata header (`anyedge_backhaul::stream`, its wire format) instead of
/// seven headers, and the worker writes the headers out: HPACK encodes and decodes every header
/// of every stream, which made these seven a sixth of the extra hop's work.
pub(crate) type Forwarded = anyedge_backhaul::stream::Client;

/// The client of a request that came on `client` in `version`.
pub(crate) fn forwarded(client: &ClientInfo, version: http::Version) -> Forwarded {
    Forwarded {
        ip: client.peer.ip().to_canonical(),
        port: client.local.port(),
        tls: client.tls,
        http2: version == http::Version::HTTP_2,
    }
}

/// `Via`'s value for the client's protocol.
fn via(client: Forwarded) -> &'static str {
    if client.http2 {
        "2 anyedge"
    } else {
        "1.1 anyedge"
    }
}

/// The edge's part of the forwarding headers: client-sent copies of the proxy-only prefixed
/// headers are removed, and the edge's region and the request id set. [`add_client`] adds the
/// rest once the request's instance is known (here, or on the worker).
pub(crate) fn mark_edge(
    headers: &mut HeaderMap,
    names: &Prefixed,
    region: &HeaderValue,
    request_id: &HeaderValue,
) {
    // Room for these two (our HTTP/1.1 server makes it; hyper's may not have). `add_client`
    // makes its own room on the copies that get its fields in the map.
    headers.reserve(2);
    // Scan once; remove only what a client actually sent.
    if names.any_in(headers) {
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| names.proxy_only.contains(k))
            .cloned()
            .collect();
        for n in spoofed {
            headers.remove(n);
        }
    }
    headers.insert(names.region.clone(), region.clone());
    headers.insert(names.request_id.clone(), request_id.clone());
}

/// The client's part of the forwarding headers, each exactly once: `X-Forwarded-For` is
/// appended to (every received value, in order, then the client), `X-Forwarded-Proto/Port/SSL`
/// and `<P>-Client-IP`, `<P>-Forwarded-Port` are replaced, and `Via` names this proxy. Our
/// HTTP/1.1 client writes the same fields straight into the head ([`ClientFields`]).
pub(crate) fn add_client(headers: &mut HeaderMap, names: &Prefixed, client: &Forwarded) {
    headers.reserve(8);
    let xff = HeaderName::from_static("x-forwarded-for");
    let received: Vec<&[u8]> = headers.get_all(&xff).iter().map(|v| v.as_bytes()).collect();
    let mut value = Vec::with_capacity(64);
    forwarded_for(&received, client.ip, &mut value);
    set(headers, xff, value);
    let (proto, ssl) = proto_ssl(client);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-ssl"),
        HeaderValue::from_static(ssl),
    );
    let port = HeaderValue::from(client.port);
    headers.insert(HeaderName::from_static("x-forwarded-port"), port.clone());
    headers.insert(names.forwarded_port.clone(), port);
    let mut ip = Vec::with_capacity(40);
    anyedge_backhaul::stream::write_ip_bytes(&mut ip, client.ip);
    set(headers, names.client_ip.clone(), ip);
    headers.append(http::header::VIA, HeaderValue::from_static(via(*client)));
}

/// `X-Forwarded-For`: the received values that say something, joined, then the client.
fn forwarded_for(received: &[&[u8]], ip: std::net::IpAddr, out: &mut Vec<u8>) {
    for v in received {
        let text = v.trim_ascii();
        if !text.is_empty() {
            out.extend_from_slice(text);
            out.extend_from_slice(b", ");
        }
    }
    anyedge_backhaul::stream::write_ip_bytes(out, ip);
}

fn proto_ssl(client: &Forwarded) -> (&'static str, &'static str) {
    if client.tls {
        ("https", "on")
    } else {
        ("http", "off")
    }
}

/// The client's forwarding fields as [`add_client`] sets them, for our HTTP/1.1 client to write
/// straight into the head it sends: no `HeaderMap` inserts, no rehash, no clone per attempt
/// (`add_client` was a tenth of the instructions of a proxied request).
#[derive(Clone, Copy)]
pub(crate) struct ClientFields<'a> {
    pub names: &'a Prefixed,
    pub client: Forwarded,
}

impl ClientFields<'_> {
    /// Whether a received field is one these replace (`X-Forwarded-For` is among them: its
    /// received values go into the one written). `Via` is appended to, so it stays.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        n.strip_prefix("x-forwarded-")
            .is_some_and(|rest| matches!(rest, "for" | "proto" | "ssl" | "port"))
            || *name == self.names.forwarded_port
            || *name == self.names.client_ip
    }

    /// [`Self::replaces`] for a name as received (any case). The prefixed names are never
    /// among a kept head's fields ([`super::http1::RawRequest`]).
    pub fn replaces_raw(&self, name: &[u8]) -> bool {
        name.len() >= 15
            && name[..12].eq_ignore_ascii_case(b"x-forwarded-")
            && [&b"for"[..], b"proto", b"ssl", b"port"]
                .iter()
                .any(|s| name[12..].eq_ignore_ascii_case(s))
    }

    /// Write the fields as head lines; `xff`: the received `X-Forwarded-For` values, in order.
    pub fn write(&self, xff: &[&[u8]], out: &mut Vec<u8>) {
        let client = &self.client;
        out.extend_from_slice(b"x-forwarded-for: ");
        forwarded_for(xff, client.ip, out);
        out.extend_from_slice(b"\r\n");
        let (proto, ssl) = proto_ssl(client);
        line(out, b"x-forwarded-proto", proto.as_bytes());
        line(out, b"x-forwarded-ssl", ssl.as_bytes());
        let port = Decimal::new(u64::from(client.port));
        line(out, b"x-forwarded-port", port.as_bytes());
        line(
            out,
            self.names.forwarded_port.as_str().as_bytes(),
            port.as_bytes(),
        );
        out.extend_from_slice(self.names.client_ip.as_str().as_bytes());
        out.extend_from_slice(b": ");
        anyedge_backhaul::stream::write_ip_bytes(out, client.ip);
        out.extend_from_slice(b"\r\n");
        line(out, b"via", via(*client).as_bytes());
    }
}

/// The `Content-Length` a message declares, when it declares a valid one.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A chunked body's trailer fields as a map (`None` when there are none). The decoder has
/// validated them; a field `http` could still not hold is left out.
pub(crate) fn trailer_map(decoder: &anyedge_http1::ChunkedDecoder) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in decoder.trailers() {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

/// One head line: `{name}: {value}\r\n`.
pub(crate) fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A number in decimal, written without allocating or the formatting machinery.
pub(crate) struct Decimal {
    bytes: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(mut n: u64) -> Decimal {
        let mut d = Decimal {
            bytes: [0; 20],
            start: 20,
        };
        loop {
            d.start -= 1;
            d.bytes[d.start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return d;
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: Vec<u8>) {
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(name, v);
    }
}

/// A request's id, `<ULID>-<region>`: sortable by time, unique without coordination. Held
/// inline (no allocation): written as bytes by our HTTP/1.1 server and client and the access
/// log; a [`HeaderValue`] only where a `HeaderMap` needs one ([`RequestId::header_value`]).
#[derive(Clone, Copy)]
pub(crate) struct RequestId {
    text: [u8; 26 + 1 + 64],
    len: u8,
}

impl RequestId {
    pub fn new(region: &str) -> RequestId {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
        let value: u128 = (u128::from(millis & 0xFFFF_FFFF_FFFF) << 80) | random;
        let mut text = [0u8; 26 + 1 + 64];
        for (i, byte) in text[..26].iter_mut().enumerate() {
            let shift = 125 - 5 * i as u32;
            *byte = ALPHABET[((value >> shift) & 0x1F) as usize];
        }
        text[26] = b'-';
        // Region names are at most 63 characters of a header token (config validation);
        // longer ones are cut, anything else left out.
        let mut len = 27;
        for &b in region.as_bytes().iter().take(64) {
            if b.is_ascii_graphic() {
                text[len] = b;
                len += 1;
            }
        }
        RequestId {
            text,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }

    /// Visible ASCII only (see [`RequestId::new`]).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// As a header value for a `HeaderMap` (an allocation). Unique to this request: HPACK must
    /// not index it (every request would add an entry to a backhaul connection's table, evict
    /// one, and lengthen the lookups of the next).
    pub fn header_value(&self) -> HeaderValue {
        let mut id = HeaderValue::from_bytes(self.as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"));
        id.set_sensitive(true);
        id
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::try_from(*k).expect("name"),
                HeaderValue::try_from(*v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        assert_eq!(Decimal::new(0).as_bytes(), b"0");
        assert_eq!(Decimal::new(1234567).as_bytes(), b"1234567");
        assert_eq!(Decimal::new(u64::MAX).as_bytes(), b"18446744073709551615");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_is_kept_for_a_protocol_switch() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarding_headers_are_added_once_and_spoofs_replaced() {
        let names = Prefixed::new("fly");
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("fly-client-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("fly-request-id", "forged"),
        ]);
        let client = ClientInfo {
            peer: "127.0.0.7:5555".parse().expect("addr"),
            local: "127.0.0.1:8080".parse().expect("addr"),
            tls: false,
        };
        let id = RequestId::new("ord").header_value();
        mark_edge(&mut h, &names, &HeaderValue::from_static("ord"), &id);
        let forwarded = forwarded(&client, http::Version::HTTP_11);
        add_client(&mut h, &names, &forwarded);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.7");
        assert_eq!(h["fly-client-ip"], "127.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-ssl"], "off");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h["fly-forwarded-port"], "8080");
        assert_eq!(h["fly-region"], "ord");
        assert_eq!(h["fly-request-id"], id);
        assert_eq!(h.get_all("fly-client-ip").iter().count(), 1);
        assert_eq!(h["via"], "1.1 anyedge");
    }

    /// What our HTTP/1.1 client writes into a head is what `add_client` puts in the map, for
    /// received fields it keeps, replaces or joins.
    #[test]
    fn client_fields_written_into_a_head_equal_add_client() {
        let names = Prefixed::new("fly");
        let cases: [&[(&str, &str)]; 5] = [
            &[("host", "a.example")],
            &[("x-forwarded-for", "203.0.113.9")],
            &[
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-for", " 203.0.113.9 "),
            ],
            &[("x-forwarded-for", " "), ("via", "1.0 other")],
            &[
                ("fly-client-ip", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-port", "1"),
                ("fly-forwarded-port", "2"),
                ("x-forwarded-ssl", "on"),
                ("x-kept", "yes"),
            ],
        ];
        let clients = [
            ("127.0.0.7", 8080, false, false),
            ("2001:db8::7", 443, true, true),
        ];
        for received in cases {
            for (ip, port, tls, http2) in clients {
                let client = Forwarded {
                    ip: ip.parse().expect("ip"),
                    port,
                    tls,
                    http2,
                };
                let mut expected = map(received);
                add_client(&mut expected, &names, &client);
                let mut expected: Vec<(String, String)> = expected
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().expect("text").to_string()))
                    .collect();
                expected.sort();

                let fields = ClientFields {
                    names: &names,
                    client,
                };
                let h = map(received);
                let mut xff = Vec::new();
                let mut out = Vec::new();
                for (n, v) in &h {
                    if fields.replaces(n) {
                        if n.as_str() == "x-forwarded-for" {
                            xff.push(v.as_bytes());
                        }
                        continue;
                    }
                    out.extend_from_slice(
                        format!("{n}: {}\r\n", v.to_str().expect("text")).as_bytes(),
                    );
                }
                fields.write(&xff, &mut out);
                let text = String::from_utf8(out).expect("text");
                let mut written: Vec<(String, String)> = text
                    .split_terminator("\r\n")
                    .map(|l| {
                        let (n, v) = l.split_once(": ").expect("a field line");
                        (n.to_string(), v.to_string())
                    })
                    .collect();
                written.sort();
                assert_eq!(written, expected, "{received:?} {client:?}");
            }
        }
    }

    #[test]
    fn the_client_as_backhaul_carries_it_reads_back_what_was_written() {
        for (ip, port, tls, http2) in [
            ("127.0.0.7", 8080, false, false),
            ("203.0.113.200", 443, true, true),
            ("2001:db8::7", 1, true, false),
            ("::1", 65535, false, true),
        ] {
            let f = Forwarded {
                ip: ip.parse().expect("ip"),
                port,
                tls,
                http2,
            };
            let mut text = String::new();
            f.write(&mut text);
            assert_eq!(Forwarded::parse(&text), Some(f), "{f:?}");
        }
        assert_eq!(
            Forwarded::parse("127.0.0.1 80 http 1.1").map(|f| f.port),
            Some(80)
        );
        // Fields a later edge may add are ignored.
        assert!(Forwarded::parse("127.0.0.1 80 https 2 more").is_some());
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1 80",
            "127.0.0.1 80 http",
            "127.0.0.1 80 ftp 1.1",
            "127.0.0.1 80 http 3",
            "127.0.0.1 70000 http 1.1",
            "localhost 80 http 1.1",
            "127.0.0.1  80 http 1.1",
        ] {
            assert_eq!(Forwarded::parse(bad), None, "{bad:?}");
        }
        // What the worker writes out is what the edge would have written.
        let names = Prefixed::new("anyedge");
        let f = Forwarded::parse("10.1.2.3 8443 https 2").expect("valid");
        let mut h = map(&[("x-forwarded-for", "198.51.100.1")]);
        add_client(&mut h, &names, &f);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.1.2.3");
        assert_eq!(h["anyedge-client-ip"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-ssl"], "on");
        assert_eq!(h["x-forwarded-port"], "8443");
        assert_eq!(h["anyedge-forwarded-port"], "8443");
        assert_eq!(h["via"], "2 anyedge");
    }

    #[test]
    fn request_ids_are_ulids_with_region_and_sort_by_time() {
        let a = RequestId::new("syd");
        let text = a.as_str();
        assert_eq!(text.len(), 26 + 4);
        assert!(text.ends_with("-syd"));
        assert!(text[..26]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
        assert_ne!(RequestId::new("syd").as_bytes(), a.as_bytes());
        assert!(a.header_value().is_sensitive());
        assert_eq!(a.header_value().as_bytes(), a.as_bytes());
    }
}
