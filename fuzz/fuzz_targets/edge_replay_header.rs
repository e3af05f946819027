//! Fuzz `anyedge_edge::fuzz::edge_replay_header` (the test suite runs the same check over `seeds/edge_replay_header`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_edge::fuzz::edge_replay_header(data));
