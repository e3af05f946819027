//! Fuzz the HTTP/1.1 response head parser (first byte picks the request method): never panics, prefixes agree, no-body statuses have none, written heads parse back (`anyedge_http1::fuzz::response`, which the test suite runs over
//! `seeds/http1_response`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_http1::fuzz::response(data));
