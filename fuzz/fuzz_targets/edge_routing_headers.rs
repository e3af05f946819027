//! Fuzz `anyedge_edge::fuzz::edge_routing_headers` (the test suite runs the same check over `seeds/edge_routing_headers`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_edge::fuzz::edge_routing_headers(data));
