//! Collects every problem found in one file and gives each its line and column.

use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::path::{self, Seg};

/// Finds where a key path sits in the source text.
pub(crate) trait Locate {
    /// Byte offset of the value at `path` (of its key when `key` is set and the key has a place),
    /// or of the nearest enclosing thing that has a place.
    fn locate(&self, path: &[Seg], key: bool) -> Option<usize>;
}

/// The problems of one file, in the order they are found.
pub(crate) struct Report<'a> {
    origin: &'a str,
    text: &'a str,
    locator: &'a dyn Locate,
    diags: Vec<Diagnostic>,
    /// Lenient mode (values written by a newer node): unknown keys are collected here instead
    /// of being problems.
    ignored: Option<Vec<String>>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(origin: &'a str, text: &'a str, locator: &'a dyn Locate) -> Self {
        Report {
            origin,
            text,
            locator,
            diags: Vec::new(),
            ignored: None,
        }
    }

    /// Collect unknown keys instead of reporting them (see [`Report::unknown_key`]).
    pub(crate) fn lenient(mut self) -> Self {
        self.ignored = Some(Vec::new());
        self
    }

    /// An unknown key: a problem, or in lenient mode a note of its path.
    pub(crate) fn unknown_key(&mut self, path: &str, message: impl Into<String>) {
        match self.ignored.as_mut() {
            Some(ignored) => ignored.push(path.to_string()),
            None => self.key_error(path, message),
        }
    }

    /// The unknown keys passed over in lenient mode.
    pub(crate) fn ignored(&self) -> Vec<String> {
        self.ignored.clone().unwrap_or_default()
    }

    /// A problem with the value at `path`.
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        let offset = self.locator.locate(&path::segments(path), false);
        self.push(path, offset, message.into());
    }

    /// The value of `result`, or its message reported at `path`.
    pub(crate) fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    /// A problem with the key at `path` itself (unknown or misplaced keys).
    pub(crate) fn key_error(&mut self, path: &str, message: impl Into<String>) {
        let offset = self.locator.locate(&path::segments(path), true);
        self.push(path, offset, message.into());
    }

    /// A problem whose place the parser already knows.
    pub(crate) fn error_at(
        &mut self,
        path: &str,
        offset: Option<usize>,
        message: impl Into<String>,
    ) {
        let offset = offset.or_else(|| self.locator.locate(&path::segments(path), false));
        self.push(path, offset, message.into());
    }

    /// " (first at line N)" for the value at `path`, or nothing when it has no place.
    pub(crate) fn place_of(&self, path: &str) -> String {
        match self.locator.locate(&path::segments(path), false) {
            Some(o) => format!(" (first at line {})", line_col(self.text, o).0),
            None => String::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.diags.is_empty()
    }

    /// Every problem, sorted by place so the list reads top to bottom.
    pub(crate) fn finish(mut self) -> Diagnostics {
        self.diags
            .sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
        Diagnostics(self.diags)
    }

    fn push(&mut self, path: &str, offset: Option<usize>, message: String) {
        let mut d = Diagnostic::new(self.origin, path, message);
        if let Some((line, column)) = offset.map(|o| line_col(self.text, o)) {
            d.line = Some(line);
            d.column = Some(column);
        }
        self.diags.push(d);
    }
}

/// 1-based line and column (in characters) of a byte offset; offsets past the end or inside a
/// character are moved back to the nearest character start.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn lines_and_columns() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 99), (3, 2));
        assert_eq!(line_col(t, 6), (2, 3));
    }
}
