//! Fuzz the control socket's message decoder (`anyedge run --upgrade` and the running node read
//! each other's messages): it never panics, and what it decodes encodes to bytes that decode
//! to the same message (`anyedge_core::control::fuzz_check`, which the test suite runs over
//! `seeds/control_message` in `crates/anyedge/tests/fuzz_corpus.rs`). The first input byte is
//! the number of descriptors that came with the message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| anyedge_core::control::fuzz_check(data));
