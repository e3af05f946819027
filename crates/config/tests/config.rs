//! Tests of the config crate: files that load and what they map to, and every validation error
//! with its message, path and line.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod config {
    mod json_errors;
    mod loads;
    mod many;
    mod on_demand;
    mod outlier;
    mod policy;
    mod robust;
    mod toml_errors;
    mod toml_rules;
}

use anyedge_config::{parse, Config, Diagnostic};

/// `text` parsed as a file named `test.toml` (or `.json`), which must be valid.
#[track_caller]
pub fn ok(text: &str) -> Config {
    match parse(text, "test") {
        Ok(c) => c,
        Err(d) => panic!("expected a valid config, got:\n{d}"),
    }
}

/// Every problem found in `text`, which must be invalid.
#[track_caller]
pub fn errors(text: &str) -> Vec<Diagnostic> {
    match parse(text, "test") {
        Ok(_) => panic!("expected problems, the config is valid:\n{text}"),
        Err(d) => d.0,
    }
}

/// 1-based line of the first occurrence of `needle` in `text`.
#[track_caller]
pub fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` is not in the text"));
    text[..at].matches('\n').count() + 1
}

/// `text` has exactly one problem: at `path`, on the line holding `at`, saying `message`
/// (a substring).
#[track_caller]
pub fn one(text: &str, path: &str, at: &str, message: &str) -> Diagnostic {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one problem, got:\n{}", show(&errs));
    let d = errs.into_iter().next().unwrap();
    assert_eq!(d.path, path, "path of: {d}");
    assert_eq!(d.line, Some(line_of(text, at)), "line of: {d}");
    assert!(d.column.is_some(), "column of: {d}");
    assert!(
        d.message.contains(message),
        "message of: {d}\nwanted: {message}"
    );
    d
}

pub fn show(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("{d}\n")).collect()
}

/// A one-app file around `service` (the body of `[[apps.services]]`) and `rest` appended.
pub fn app(service: &str, rest: &str) -> String {
    format!(
        "[node]\nid = \"n1\"\n\n[[apps]]\nname = \"web\"\nhostnames = [\"web.example.com\"]\n\n  [[apps.services]]\n{service}\n{rest}"
    )
}
