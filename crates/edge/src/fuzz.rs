//! The checks behind the `edge_*` fuzz targets in `fuzz/`, kept here so that
//! `tests/fuzz_corpus.rs` runs every seed and crash input through them on stable Rust: the
//! headers a client sends to steer placement, and the `P-Replay` header an instance answers
//! with. Not an API: the asserts are the point.

use crate::front::http::routing::{header_text, Replay, Wishes};
use crate::instance::headers::Prefixed;
use http::{HeaderMap, HeaderValue};
use std::time::Duration;

/// A region or instance name as the wishes keep it: trimmed, not empty, one name.
fn one_name(s: &str) {
    assert!(!s.is_empty() && s.trim() == s, "{s:?}");
}

/// Any text as `P-Replay`: parsing never panics, what it keeps is trimmed and bounded, and any
/// text it may be echoed back in (`P-Replay-Src`, `P-Replay-Failed`) is a valid header value.
pub fn edge_replay_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let echoed = header_text(&text);
    assert!(echoed
        .as_bytes()
        .iter()
        .all(|&b| b == b' ' || b.is_ascii_graphic()));
    let Ok(replay) = Replay::parse(&text) else {
        return;
    };
    for region in &replay.regions {
        one_name(region);
        assert!(!region.contains(',') && !region.contains(';'), "{region:?}");
        assert_eq!(*region, region.to_ascii_lowercase());
    }
    let named = [
        &replay.instance,
        &replay.prefer_instance,
        &replay.app,
        &replay.state,
    ];
    for v in named.into_iter().flatten() {
        one_name(v);
        assert!(!v.contains(';'), "{v:?}");
    }
    assert!(replay
        .timeout
        .is_none_or(|t| t <= Duration::from_secs(3600)));
    let wishes = replay.wishes();
    assert_eq!(wishes.force_regions, replay.regions);
    // The same text reads the same way again.
    assert_eq!(Replay::parse(&text), Ok(replay));
}

/// Any values in the routing headers (one per line: force region, prefer region, force
/// instance, prefer instance, debug, debug token): taking them never panics, leaves none of
/// them for the instance, and keeps only trimmed, lower-cased region names.
pub fn edge_routing_headers(data: &[u8]) {
    let names = Prefixed::new("P");
    let mut headers = HeaderMap::new();
    let slots = [
        &names.force_region,
        &names.prefer_region,
        &names.force_instance_id,
        &names.prefer_instance_id,
        &names.debug,
        &names.debug_token,
    ];
    for (name, value) in slots.iter().zip(data.split(|&b| b == b'\n')) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append((*name).clone(), v);
        }
    }
    headers.insert(http::header::HOST, HeaderValue::from_static("app.example"));
    let asked_route = headers
        .get(&names.debug)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("route")));
    let had_token = headers.contains_key(&names.debug_token);
    let (wishes, token) = Wishes::take_from(&mut headers, &names);
    for name in slots {
        assert!(!headers.contains_key(name), "{name} left for the instance");
    }
    assert_eq!(headers.len(), 1, "only the routing headers are taken");
    for region in wishes.force_regions.iter().chain(&wishes.prefer_regions) {
        one_name(region);
        assert!(!region.contains(','), "{region:?}");
        assert_eq!(*region, region.to_ascii_lowercase());
    }
    for instance in [&wishes.force_instance, &wishes.prefer_instance]
        .into_iter()
        .flatten()
    {
        one_name(instance);
    }
    assert_eq!(token.is_some(), asked_route && had_token);
    let _ = wishes.unmet_text();
}
