//! Fuzz the raw-TCP backhaul header decoder: it never panics, never claims more bytes than it
//! was given, and what it decodes encodes back to the same bytes and decodes equal
//! (`anyedge_backhaul::fuzz::tcp_header`, which the test suite runs over `seeds/tcp_header`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_backhaul::fuzz::tcp_header(data));
