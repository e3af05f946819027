//! The check behind the `config_text` fuzz target in `fuzz/`, kept here so that
//! `tests/fuzz_corpus.rs` runs every seed and crash input through it on stable Rust. Config text
//! reaches a node from its operator's file and, through etcd, from other nodes (`apps put`
//! values are TOML read by [`crate::parse_apps_lenient`]). Not an API: the asserts are the
//! point.

/// Any text, in either format and as an apps file: parsing never panics, a refusal always says
/// something, and the verdict does not depend on anything but the text.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = crate::parse(text, "fuzz.toml");
    let again = crate::parse(text, "fuzz.toml");
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the same text gave another config"),
        (a, b) => assert_eq!(a.is_ok(), b.is_ok(), "the verdict changed: {text:?}"),
    }
    if let Err(problems) = &first {
        assert!(
            !problems.to_string().trim().is_empty(),
            "a refusal without a reason"
        );
    }
    if let Err(problems) = crate::parse_apps(text, "fuzz.toml", None) {
        assert!(
            !problems.to_string().trim().is_empty(),
            "a refusal without a reason"
        );
    }
    match crate::parse_apps_lenient(text, "fuzz.toml") {
        Ok((apps, _ignored)) => {
            // What the lenient reader accepts has names that the strict rules accept too.
            for app in &apps {
                assert!(crate::rules::name("app name", &app.name).is_ok(), "{app:?}");
            }
        }
        Err(problems) => {
            assert!(
                !problems.to_string().trim().is_empty(),
                "a refusal without a reason"
            );
        }
    }
}
