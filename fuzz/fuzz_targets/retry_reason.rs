//! Fuzz the `anyedge-retry-elsewhere` reasons and the raw-TCP reply codes: any text reads as
//! one reason, which reads back the same (`anyedge_backhaul::fuzz::retry_reason`, which the
//! test suite runs over `seeds/retry_reason`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_backhaul::fuzz::retry_reason(data));
