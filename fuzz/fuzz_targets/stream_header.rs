//! Fuzz the backhaul stream header (`anyedge-backhaul: <app> <instance> <client>`): parsing
//! never panics and what parses writes back to text that parses equal
//! (`anyedge_backhaul::fuzz::stream_header`, which the test suite runs over
//! `seeds/stream_header`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_backhaul::fuzz::stream_header(data));
