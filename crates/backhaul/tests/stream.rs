//! The backhaul stream header, on arbitrary input (proptest, the in-suite stand-in for
//! `fuzz/fuzz_targets/stream_header.rs`, running the same check): any client with any names the
//! writer takes reads back equal, in today's exact text.

use anyedge_backhaul::stream::{parse_stream, Client, Target};
use proptest::prelude::*;
use std::net::IpAddr;

fn client() -> impl Strategy<Value = Client> {
    let v4 = any::<[u8; 4]>().prop_map(IpAddr::from);
    let v6 = any::<[u8; 16]>().prop_map(IpAddr::from);
    (
        prop_oneof![v4, v6],
        any::<u16>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(ip, port, tls, http2)| Client {
            ip,
            port,
            tls,
            http2,
        })
}

/// Names as the writer takes them: visible ASCII or tab, no space.
fn name() -> impl Strategy<Value = String> {
    "[!-~\t]{1,40}"
}

proptest! {
    #[test]
    fn written_headers_read_back_in_todays_text(app in name(), instance in name(), c in client()) {
        let target = Target::new(&app, &instance).expect("valid names");
        let header = target.header(c);
        let scheme = if c.tls { "https" } else { "http" };
        let version = if c.http2 { "2" } else { "1.1" };
        // Today's edge: format!("{app} {instance} ") then write!(" {port} {scheme} {version}").
        prop_assert_eq!(&header, &format!("{app} {instance} {} {} {scheme} {version}", c.ip, c.port));
        prop_assert!(header.len() <= target.prefix().len() + Client::MAX_LEN);
        prop_assert_eq!(parse_stream(&header), Some((app.as_str(), instance.as_str(), c)));
        // A later edge's extra fields are ignored.
        let longer = format!("{header} x y");
        prop_assert_eq!(parse_stream(&longer), Some((app.as_str(), instance.as_str(), c)));
    }

    #[test]
    fn arbitrary_text_passes_the_fuzz_check(text in "[ -~\t]{0,80}") {
        anyedge_backhaul::fuzz::stream_header(text.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_pass_the_fuzz_check(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        anyedge_backhaul::fuzz::stream_header(&bytes);
    }

    #[test]
    fn mutated_headers_pass_the_fuzz_check(c in client(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = Target::new("app", "inst").expect("valid").header(c).into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        anyedge_backhaul::fuzz::stream_header(&bytes);
    }
}
