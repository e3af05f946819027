//! Odd input: every prefix of a valid file, byte-order marks, CRLF line endings.

use anyedge_config::parse;

use crate::{errors, ok};

const FULL: &str = include_str!("../data/full.toml");
const SAMPLE: &str = include_str!("../data/work-sample.json");

#[test]
fn no_prefix_of_a_valid_file_panics() {
    for text in [FULL, SAMPLE] {
        for end in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
            if let Err(d) = parse(&text[..end], "prefix") {
                assert!(!d.0.is_empty());
                assert!(d.0.iter().all(|d| d.line.is_none() || d.column.is_some()));
            }
        }
    }
}

#[test]
fn byte_order_mark_is_ignored() {
    assert_eq!(ok(&format!("\u{feff}{SAMPLE}")).apps.len(), 3);
    let errs = errors("\u{feff}[node]\nthreads = -1\n");
    assert_eq!((errs[0].line, errs[0].column), (Some(2), Some(11)));
    assert!(
        errs[0].message.contains("expected a non-negative integer"),
        "{}",
        errs[0]
    );
}

#[test]
fn crlf_line_endings_keep_lines_right() {
    let text = "[node]\r\nid = \"a\"\r\n\r\n[admin]\r\nlisten = \"nope\"\r\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (Some(5), Some(10)));
    assert_eq!(ok(&SAMPLE.replace('\n', "\r\n")).apps.len(), 3);
}
