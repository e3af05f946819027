//! Fuzz the raw-TCP backhaul header decoder: it never panics, never claims more bytes than it
//! was given, and what it decodes encodes back to the same bytes and decodes equal.
#![no_main]

use anyedge_backhaul::header::{TcpHeader, TcpReply, MAX_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let [a, b, ..] = *data {
        let _ = TcpReply::decode([a, b]);
    }
    let Ok((header, used)) = TcpHeader::decode(data) else {
        return;
    };
    assert!(used <= data.len() && used <= MAX_HEADER_LEN);
    let encoded = match header.encode() {
        Ok(encoded) => encoded,
        Err(e) => panic!("a decoded header does not encode: {e}"),
    };
    assert_eq!(encoded, &data[..used]);
    assert_eq!(TcpHeader::decode(&encoded), Ok((header, used)));
});
