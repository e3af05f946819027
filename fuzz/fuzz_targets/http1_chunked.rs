//! Fuzz the HTTP/1.1 chunked decoder: whole, 1-byte and random splits agree, canonical re-encoding decodes the same (`anyedge_http1::fuzz::chunked`, which the test suite runs over
//! `seeds/http1_chunked`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_http1::fuzz::chunked(data));
