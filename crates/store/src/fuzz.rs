//! The check behind the `store_values` fuzz target in `fuzz/`, kept here so that
//! `tests/fuzz_corpus.rs` runs every seed and crash input through it on stable Rust. Every
//! value under the catalog's prefix in etcd is written by another node (or `anyedge apps
//! put`) and decoded by every node. Not an API: the asserts are the point.

use crate::values::{decode_app, encode_app, InstanceValue, NodeValue};

/// Any bytes as an instance, node and app value: decoding never panics, and what decodes
/// encodes to a value that decodes equal (nothing a node writes is lost or changed on the way
/// to the others).
pub fn store_values(data: &[u8]) {
    // The key a value is stored under must name it: take the name from the value itself, so
    // that well-formed values get past that check.
    let named = |field: &str| -> String {
        serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| v.get(field)?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "fuzz".to_string())
    };
    let id = named("id");
    if let Ok((value, instance)) = InstanceValue::decode(data, &id) {
        let again = InstanceValue::new(&instance, &value.node).encode();
        match InstanceValue::decode(&again, &id) {
            Ok((value2, instance2)) => {
                assert_eq!(instance, instance2, "an instance changed on the way");
                assert_eq!(value.node, value2.node);
            }
            Err(e) => panic!("a decoded instance does not decode again: {e}"),
        }
    }
    if let Ok(node) = NodeValue::decode(data, &id) {
        match NodeValue::decode(&node.encode(), &id) {
            Ok(again) => assert_eq!(node, again, "a node changed on the way"),
            Err(e) => panic!("a decoded node does not decode again: {e}"),
        }
    }
    let name = named("name");
    if let Ok((app, _ignored)) = decode_app(data, &name) {
        match decode_app(&encode_app(&app), &name) {
            Ok((again, ignored)) => {
                assert_eq!(app, again, "an app changed on the way");
                assert!(
                    ignored.is_empty(),
                    "our own encoding has unknown keys: {ignored:?}"
                );
            }
            Err(e) => panic!("a decoded app does not decode again: {e}"),
        }
    }
}
