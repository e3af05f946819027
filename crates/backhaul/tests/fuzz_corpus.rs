//! The node-to-node formats' fuzz targets (`anyedge_backhaul::fuzz`) over their seeds and any
//! local corpus, in the normal test suite (`anyedge_test_support::fuzz`).

use anyedge_test_support::fuzz::Check;

const TARGETS: [(&str, Check); 4] = [
    ("tcp_header", anyedge_backhaul::fuzz::tcp_header),
    ("stream_header", anyedge_backhaul::fuzz::stream_header),
    ("retry_reason", anyedge_backhaul::fuzz::retry_reason),
    ("load_feed", anyedge_backhaul::fuzz::load_feed),
];

// Every other crate's targets carry its name as a prefix (`http1_`, `config_`, `store_`,
// `edge_`, and `control_` for anyedge-core's, run by `crates/anyedge/tests/fuzz_corpus.rs`) and
// are run by its own `tests/fuzz_corpus.rs`; the rest are this crate's.
const OTHERS: [&str; 5] = ["http1_", "config_", "store_", "edge_", "control_"];

anyedge_test_support::fuzz_corpus_tests!(TARGETS, |name: &str| {
    !OTHERS.iter().any(|p| name.starts_with(p))
});
