//! The catalog values' fuzz targets (`anyedge_store::fuzz`) over their seeds and any local corpus, in the normal test suite
//! (`anyedge_test_support::fuzz`).

use anyedge_test_support::fuzz::Check;

const TARGETS: [(&str, Check); 1] = [("store_values", anyedge_store::fuzz::store_values)];

anyedge_test_support::fuzz_corpus_tests!(TARGETS, |name: &str| name.starts_with("store_"));
