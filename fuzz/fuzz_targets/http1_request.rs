//! Fuzz the HTTP/1.1 request head parser: never panics, 1-byte-split prefixes agree with the whole, written heads parse back (`anyedge_http1::fuzz::request`, which the test suite runs over
//! `seeds/http1_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_http1::fuzz::request(data));
