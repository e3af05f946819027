//! Fuzz the load-feed reader: the same frames whatever the chunking, the frame bound kept,
//! and every line it reads writes back to a line that reads equal
//! (`anyedge_backhaul::fuzz::load_feed`, which the test suite runs over `seeds/load_feed`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_backhaul::fuzz::load_feed(data));
