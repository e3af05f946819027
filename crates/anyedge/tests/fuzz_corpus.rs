//! The control socket's fuzz target (`fuzz/fuzz_targets/control_message.rs`, whose check is
//! `anyedge_core::control::fuzz_check`) over its seeds and any local corpus, in the normal test
//! suite (`anyedge_test_support::fuzz`).

use anyedge_test_support::fuzz::Check;

const TARGETS: [(&str, Check); 1] = [("control_message", anyedge_core::control::fuzz_check)];

anyedge_test_support::fuzz_corpus_tests!(TARGETS, |name: &str| name.starts_with("control_"));
