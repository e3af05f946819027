//! PROXY protocol headers (v1 text, v2 binary) that tell a TCP instance who the client is.
//! Spec: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt

use anyedge_config::ProxyProtoVersion;
use std::net::{IpAddr, SocketAddr};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a connection from `client` accepted on `local`. Addresses of different
/// families are both sent as IPv6 (v4-mapped), since the protocol needs one family.
pub fn encode(version: ProxyProtoVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(client, local);
    match version {
        ProxyProtoVersion::V1 => encode_v1(src, dst),
        ProxyProtoVersion::V2 => encode_v2(src, dst),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    match (ia, ib) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            (SocketAddr::new(ia, a.port()), SocketAddr::new(ib, b.port()))
        }
        _ => (
            SocketAddr::new(IpAddr::V6(to_v6(ia)), a.port()),
            SocketAddr::new(IpAddr::V6(to_v6(ib)), b.port()),
        ),
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::{v1, v2, HeaderResult};

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v1_as_a_parser_reads_it() {
        let bytes = encode(
            ProxyProtoVersion::V1,
            sa("192.0.2.7:40000"),
            sa("127.0.0.1:5432"),
        );
        assert_eq!(bytes, b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5432\r\n");
        let text = std::str::from_utf8(&bytes).expect("ascii");
        let header = v1::Header::try_from(text).expect("valid v1");
        assert_eq!(
            header.addresses,
            v1::Addresses::new_tcp4([192, 0, 2, 7], [127, 0, 0, 1], 40000, 5432)
        );
    }

    #[test]
    fn v2_as_a_parser_reads_it() {
        let bytes = encode(
            ProxyProtoVersion::V2,
            sa("[2001:db8::1]:1234"),
            sa("[::1]:443"),
        );
        let header = v2::Header::try_from(&bytes[..]).expect("valid v2");
        assert_eq!(header.command, v2::Command::Proxy);
        match header.addresses {
            v2::Addresses::IPv6(a) => {
                assert_eq!(
                    a.source_address,
                    "2001:db8::1".parse::<std::net::Ipv6Addr>().expect("ip")
                );
                assert_eq!(a.source_port, 1234);
                assert_eq!(a.destination_port, 443);
            }
            other => panic!("expected IPv6, got {other:?}"),
        }
        assert!(matches!(
            HeaderResult::parse(&bytes),
            HeaderResult::V2(Ok(_))
        ));
    }

    #[test]
    fn mixed_families_become_v6() {
        let bytes = encode(ProxyProtoVersion::V1, sa("127.0.0.1:1"), sa("[::1]:2"));
        assert_eq!(bytes, b"PROXY TCP6 ::ffff:127.0.0.1 ::1 1 2\r\n");
        let v4 = encode(
            ProxyProtoVersion::V2,
            sa("[::ffff:10.0.0.1]:1"),
            sa("10.0.0.2:2"),
        );
        assert_eq!(
            v4[13], 0x11,
            "v4-mapped client on a v4 socket is sent as IPv4"
        );
    }
}
