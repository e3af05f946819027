//! The HTTP/1.1 message layer's fuzz targets (`anyedge_http1::fuzz`) over their seeds and any
//! local corpus, in the normal test suite (`anyedge_test_support::fuzz`).

use anyedge_test_support::fuzz::Check;

const TARGETS: [(&str, Check); 3] = [
    ("http1_request", anyedge_http1::fuzz::request),
    ("http1_response", anyedge_http1::fuzz::response),
    ("http1_chunked", anyedge_http1::fuzz::chunked),
];

anyedge_test_support::fuzz_corpus_tests!(TARGETS, |name: &str| name.starts_with("http1_"));
