//! Fuzz `anyedge_store::fuzz::store_values` (the test suite runs the same check over `seeds/store_values`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_store::fuzz::store_values(data));
