//! The node-to-node formats' fuzz targets (`anyedge_backhaul::fuzz`) over their seeds and any
//! local corpus, in the normal test suite (`anyedge_test_support::fuzz`).

use anyedge_test_support::fuzz::{check_all_run, check_local_corpus, check_seeds, Check};

const TARGETS: [(&str, Check); 4] = [
    ("tcp_header", anyedge_backhaul::fuzz::tcp_header),
    ("stream_header", anyedge_backhaul::fuzz::stream_header),
    ("retry_reason", anyedge_backhaul::fuzz::retry_reason),
    ("load_feed", anyedge_backhaul::fuzz::load_feed),
];

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
    // Every other crate's targets carry its name as a prefix (`http1_`, `config_`, `store_`,
    // `edge_`) and are run by its own `tests/fuzz_corpus.rs`; the rest are this crate's.
    let others = ["http1_", "config_", "store_", "edge_"];
    check_all_run(&TARGETS, |name: &str| {
        !others.iter().any(|p| name.starts_with(p))
    });
}
