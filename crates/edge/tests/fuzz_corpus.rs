//! The routing and replay headers' fuzz targets (`anyedge_edge::fuzz`) over their seeds and any local corpus, in the normal test suite
//! (`anyedge_test_support::fuzz`).

use anyedge_test_support::fuzz::Check;

const TARGETS: [(&str, Check); 2] = [
    ("edge_replay_header", anyedge_edge::fuzz::edge_replay_header),
    (
        "edge_routing_headers",
        anyedge_edge::fuzz::edge_routing_headers,
    ),
];

anyedge_test_support::fuzz_corpus_tests!(TARGETS, |name: &str| name.starts_with("edge_"));
