//! Config text's fuzz targets (`anyedge_config::fuzz`) over their seeds and any local corpus, in the normal test suite
//! (`anyedge_test_support::fuzz`).

use anyedge_test_support::fuzz::Check;

const TARGETS: [(&str, Check); 1] = [("config_text", anyedge_config::fuzz::config_text)];

anyedge_test_support::fuzz_corpus_tests!(TARGETS, |name: &str| name.starts_with("config_"));
