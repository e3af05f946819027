//! Fuzz `anyedge_config::fuzz::config_text` (the test suite runs the same check over `seeds/config_text`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_config::fuzz::config_text(data));
