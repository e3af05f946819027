//! The raw-TCP backhaul header and reply: wire bytes, every error, truncations, arbitrary
//! input (proptest, the in-suite stand-in for `fuzz/fuzz_targets/tcp_header.rs`), and reading
//! from a stream without reading past the header.

use anyedge_backhaul::header::{
    HeaderError, ReadError, RefuseReason, TcpHeader, TcpReply, MAX_HEADER_LEN,
};
use proptest::prelude::*;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(5);

fn v4() -> TcpHeader {
    TcpHeader {
        app: "shop".into(),
        instance: "shop-1".into(),
        client: "192.0.2.7:40001".parse().expect("literal"),
        edge_port: 5432,
    }
}

fn v6() -> TcpHeader {
    TcpHeader {
        app: "ünïcode-app".into(),
        instance: "i".repeat(255),
        client: "[2001:db8::1]:65535".parse().expect("literal"),
        edge_port: 1,
    }
}

fn encode(h: &TcpHeader) -> Vec<u8> {
    h.encode().expect("valid header")
}

#[test]
fn v4_encoding_is_the_documented_bytes() {
    let mut want = b"AEBH\x01".to_vec();
    want.extend_from_slice(b"\x04shop\x06shop-1");
    want.extend_from_slice(&[4, 192, 0, 2, 7, 0x9c, 0x41, 0x15, 0x38]);
    assert_eq!(encode(&v4()), want);
}

#[test]
fn round_trips_v4_and_v6() {
    for h in [v4(), v6()] {
        let bytes = encode(&h);
        assert!(bytes.len() <= MAX_HEADER_LEN);
        assert_eq!(TcpHeader::decode(&bytes), Ok((h.clone(), bytes.len())));
        // Bytes after the header are not part of it.
        let mut more = bytes.clone();
        more.extend_from_slice(b"client bytes");
        assert_eq!(TcpHeader::decode(&more), Ok((h, bytes.len())));
    }
}

#[test]
fn every_truncation_is_incomplete() {
    for h in [v4(), v6()] {
        let bytes = encode(&h);
        for len in 0..bytes.len() {
            assert_eq!(
                TcpHeader::decode(&bytes[..len]),
                Err(HeaderError::Incomplete),
                "prefix of {len} bytes"
            );
        }
    }
}

/// `v4()` encoded, with `at` replaced by `with`.
fn patched(at: usize, with: &[u8]) -> Vec<u8> {
    let mut bytes = encode(&v4());
    bytes.splice(at..at + with.len(), with.iter().copied());
    bytes
}

#[test]
fn every_decode_error() {
    let cases: Vec<(Vec<u8>, HeaderError)> = vec![
        (b"AEBX".to_vec(), HeaderError::BadMagic),
        // A wrong first byte is seen at once, without waiting for the rest.
        (b"X".to_vec(), HeaderError::BadMagic),
        (b"GET / HTTP/1.1\r\n".to_vec(), HeaderError::BadMagic),
        (patched(4, &[2]), HeaderError::UnsupportedVersion(2)),
        (patched(4, &[0]), HeaderError::UnsupportedVersion(0)),
        (patched(5, &[0]), HeaderError::BadName("app")),
        (patched(6, b"sh/p"), HeaderError::BadName("app")),
        (patched(6, b"sh\np"), HeaderError::BadName("app")),
        (patched(6, &[0xff, 0xfe]), HeaderError::BadName("app")),
        (patched(10, &[0]), HeaderError::BadName("instance")),
        (patched(11, b"a/b"), HeaderError::BadName("instance")),
        (patched(11, &[0x7f]), HeaderError::BadName("instance")),
        (patched(17, &[5]), HeaderError::BadFamily(5)),
        (patched(17, &[0]), HeaderError::BadFamily(0)),
    ];
    for (bytes, want) in cases {
        assert_eq!(TcpHeader::decode(&bytes), Err(want), "{bytes:?}");
    }
}

#[test]
fn every_encode_error() {
    let with = |app: &str, instance: &str| TcpHeader {
        app: app.into(),
        instance: instance.into(),
        ..v4()
    };
    assert_eq!(with("", "i").encode(), Err(HeaderError::BadName("app")));
    assert_eq!(with("a/b", "i").encode(), Err(HeaderError::BadName("app")));
    assert_eq!(
        with("a", "\t").encode(),
        Err(HeaderError::BadName("instance"))
    );
    assert_eq!(
        with(&"a".repeat(256), "i").encode(),
        Err(HeaderError::TooLong)
    );
    assert_eq!(
        with("a", &"i".repeat(256)).encode(),
        Err(HeaderError::TooLong)
    );
    assert!(with(&"a".repeat(255), &"i".repeat(255)).encode().is_ok());
}

#[test]
fn v6_scope_and_flow_are_not_carried() {
    let h = TcpHeader {
        client: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 7, 3)),
        ..v4()
    };
    let (back, _) = TcpHeader::decode(&encode(&h)).expect("decodes");
    assert_eq!(
        back.client,
        "[::1]:9".parse::<SocketAddr>().expect("literal")
    );
}

#[test]
fn replies_round_trip_and_unknown_ones_are_errors() {
    assert_eq!(TcpReply::Connected.encode(), [0, 0]);
    let mut labels = std::collections::HashSet::new();
    for (i, reason) in RefuseReason::ALL.into_iter().enumerate() {
        let reply = TcpReply::Refused(reason);
        assert_eq!(reply.encode(), [1, i as u8 + 1]);
        assert_eq!(TcpReply::decode(reply.encode()), Ok(reply));
        let label = reason.as_str();
        assert!(
            label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{label}"
        );
        assert!(labels.insert(label), "{label} twice");
    }
    assert_eq!(RefuseReason::AppOverloaded.as_str(), "app_overloaded");
    assert_eq!(TcpReply::decode([0, 0]), Ok(TcpReply::Connected));
    assert_eq!(TcpReply::decode([0, 1]), Err(HeaderError::BadReply(0, 1)));
    assert_eq!(TcpReply::decode([1, 0]), Err(HeaderError::BadReply(1, 0)));
    assert_eq!(TcpReply::decode([1, 10]), Err(HeaderError::BadReply(1, 10)));
    assert_eq!(TcpReply::decode([2, 1]), Err(HeaderError::BadReply(2, 1)));
}

#[tokio::test]
async fn read_from_stops_exactly_after_the_header() {
    let (mut edge, mut worker) = tokio::io::duplex(64);
    let h = v6();
    let mut bytes = encode(&h);
    bytes.extend_from_slice(b"first client bytes");
    // The duplex buffer is smaller than the header: the reader gets it in pieces.
    let writer = tokio::spawn(async move {
        edge.write_all(&bytes).await?;
        edge.shutdown().await?;
        std::io::Result::Ok(edge)
    });
    let got = tokio::time::timeout(DEADLINE, TcpHeader::read_from(&mut worker))
        .await
        .expect("in time")
        .expect("a header");
    assert_eq!(got, h);
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, worker.read_to_end(&mut rest))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(rest, b"first client bytes");
    writer.await.expect("joined").expect("written");
}

#[tokio::test]
async fn read_from_fails_early_and_on_close() {
    // Bad magic is reported while the writer is still open and silent.
    let (mut edge, mut worker) = tokio::io::duplex(64);
    edge.write_all(b"GET ").await.expect("write");
    let err = tokio::time::timeout(DEADLINE, TcpHeader::read_from(&mut worker))
        .await
        .expect("in time");
    assert!(
        matches!(err, Err(ReadError::Header(HeaderError::BadMagic))),
        "{err:?}"
    );

    // A header cut short by the peer closing.
    let (mut edge, mut worker) = tokio::io::duplex(1024);
    edge.write_all(&encode(&v4())[..12]).await.expect("write");
    drop(edge);
    let err = TcpHeader::read_from(&mut worker).await;
    assert!(matches!(err, Err(ReadError::Closed)), "{err:?}");
}

#[tokio::test]
async fn reply_read_from() {
    let (mut worker, mut edge) = tokio::io::duplex(64);
    let refused = TcpReply::Refused(RefuseReason::Draining);
    worker.write_all(&refused.encode()).await.expect("write");
    worker
        .write_all(&TcpReply::Connected.encode())
        .await
        .expect("write");
    worker.write_all(&[7, 7, 0]).await.expect("write");
    drop(worker);
    assert_eq!(TcpReply::read_from(&mut edge).await.ok(), Some(refused));
    assert_eq!(
        TcpReply::read_from(&mut edge).await.ok(),
        Some(TcpReply::Connected)
    );
    let bad = TcpReply::read_from(&mut edge).await;
    assert!(
        matches!(bad, Err(ReadError::Header(HeaderError::BadReply(7, 7)))),
        "{bad:?}"
    );
    let closed = TcpReply::read_from(&mut edge).await;
    assert!(matches!(closed, Err(ReadError::Closed)), "{closed:?}");
}

fn name() -> impl Strategy<Value = String> {
    "[^/\\p{Cc}]{1,60}".prop_filter("at most 255 bytes", |s| s.len() <= 255)
}

fn header() -> impl Strategy<Value = TcpHeader> {
    let v4 = any::<[u8; 4]>().prop_map(std::net::IpAddr::from);
    let v6 = any::<[u8; 16]>().prop_map(std::net::IpAddr::from);
    (
        name(),
        name(),
        prop_oneof![v4, v6],
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(app, instance, ip, port, edge_port)| TcpHeader {
            app,
            instance,
            client: SocketAddr::new(ip, port),
            edge_port,
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        if let Ok((h, used)) = TcpHeader::decode(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert!(used <= MAX_HEADER_LEN);
            let again = h.encode().expect("a decoded header encodes");
            prop_assert_eq!(&again[..], &bytes[..used]);
        }
    }

    #[test]
    fn valid_prefix_then_arbitrary_bytes(h in header(), cut in any::<prop::sample::Index>(), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut bytes = h.encode().expect("valid");
        let len = bytes.len();
        // Corrupt nothing: any prefix is Incomplete, the whole thing plus a tail decodes.
        let prefix = cut.index(len);
        prop_assert_eq!(TcpHeader::decode(&bytes[..prefix]), Err(HeaderError::Incomplete));
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(TcpHeader::decode(&bytes), Ok((h, len)));
    }

    #[test]
    fn mutated_headers_never_panic(h in header(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = h.encode().expect("valid");
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok((back, used)) = TcpHeader::decode(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(TcpHeader::decode(&back.encode().expect("encodes")), Ok((back, used)));
        }
    }
}
