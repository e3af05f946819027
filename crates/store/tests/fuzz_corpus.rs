//! The catalog values' fuzz targets (`anyedge_store::fuzz`) over their seeds and any local corpus, in the normal test suite
//! (`anyedge_test_support::fuzz`).

use anyedge_test_support::fuzz::{check_all_run, check_local_corpus, check_seeds, Check};

const TARGETS: [(&str, Check); 1] = [("store_values", anyedge_store::fuzz::store_values)];

#[test]
fn every_target_has_seeds_and_every_seed_passes() {
    check_seeds(&TARGETS);
}

#[test]
fn local_corpus_and_crash_inputs_pass() {
    check_local_corpus(&TARGETS);
}

#[test]
fn every_fuzz_target_is_run_here() {
    check_all_run(&TARGETS, |name: &str| name.starts_with("store_"));
}
