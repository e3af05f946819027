//! Line-level strictness around httparse: bare CR and bare LF, obs-fold, whitespace after a
//! field name, and the mapping of httparse's errors onto ours.

use crate::error::Error;

/// Whether `head` (a complete head as httparse accepted it) has an LF without its CR; httparse
/// accepts bare LF as a line end, RFC 9112 2.2 lets a recipient refuse it, and we do.
/// Only the LFs are looked at (found by `memchr`, a few per head): a byte-by-byte scan cost
/// 1,000 instructions per head.
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Our error for an httparse error on `window`: httparse only says which part was bad, so the
/// line structure is looked at again (only on this error path) to name the rule that failed.
/// `start_line` says whether `window` begins with a start line (false for trailers).
pub(crate) fn diagnose(e: httparse::Error, window: &[u8], start_line: bool) -> Error {
    // Only field-line errors are looked into: a start-line error may lie anywhere in it.
    let line_error = matches!(
        e,
        httparse::Error::HeaderName | httparse::Error::HeaderValue
    );
    if let Some(found) = line_error.then(|| line_fault(window, start_line)).flatten() {
        return found;
    }
    match e {
        httparse::Error::HeaderName => Error::FieldName,
        httparse::Error::HeaderValue => Error::FieldValue,
        httparse::Error::NewLine => Error::LineEnding,
        httparse::Error::Status => Error::Status,
        httparse::Error::Token => Error::Method,
        httparse::Error::TooManyHeaders => Error::TooManyFields,
        httparse::Error::Version => Error::Version,
    }
}

/// The first line fault of `window`: a CR followed by anything but LF, a field line starting
/// with whitespace, or a field name followed by whitespace. Lines are looked at in order, each
/// up to its first bad byte, and the scan stops at the first line httparse refuses for another
/// reason, so a longer window never names a different fault than a shorter one.
fn line_fault(mut window: &[u8], start_line: bool) -> Option<Error> {
    while let (true, [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..]) = (start_line, window) {
        window = rest;
    }
    let mut lines = window.split(|&b| b == b'\n');
    if start_line {
        lines.next()?;
    }
    for line in lines {
        if let [b' ' | b'\t', ..] = line {
            return Some(Error::ObsFold);
        }
        let name_end = line
            .iter()
            .position(|&b| !is_token(b))
            .unwrap_or(line.len());
        match line.get(name_end) {
            Some(b' ' | b'\t') if name_end > 0 => return Some(Error::WhitespaceAfterFieldName),
            Some(b':') if name_end > 0 => {}
            _ => return None,
        }
        let value = &line[name_end + 1..];
        match value.iter().position(|&b| !is_value_byte(b)) {
            None => {}
            Some(i) if value[i] == b'\r' && i + 1 == value.len() => {}
            Some(i) if value[i] == b'\r' => return Some(Error::BareCr),
            Some(_) => return None,
        }
    }
    None
}

/// A byte httparse takes in a field value.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// `tchar` (RFC 9110 5.6.2).
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
