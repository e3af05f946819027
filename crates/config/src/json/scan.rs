//! A span-recording JSON scanner: serde_json gives no places, so this walks the (already
//! syntax-checked) text once and records where every value and key starts, by key path
//! (`Apps[1].Ports[2]`). It also finds repeated keys, which serde_json would silently merge.

use std::collections::HashMap;

use crate::path::{self, Seg};
use crate::report::Locate;

/// Key path to (offset of the key, offset of the value).
pub(crate) struct JsonLocator {
    places: HashMap<String, (Option<usize>, usize)>,
}

impl Locate for JsonLocator {
    fn locate(&self, segs: &[Seg], want_key: bool) -> Option<usize> {
        // The nearest enclosing path that has a place.
        (0..=segs.len()).rev().find_map(|n| {
            let (key, value) = self.places.get(&path::join("", &segs[..n]))?;
            Some(if want_key && n == segs.len() {
                key.unwrap_or(*value)
            } else {
                *value
            })
        })
    }
}

/// Scan `text`, which serde_json has accepted. Returns the locator and every repeated key
/// (its path and the offset of the repeat).
pub(crate) fn scan(text: &str) -> (JsonLocator, Vec<(String, usize)>) {
    let mut s = Scanner {
        b: text.as_bytes(),
        i: 0,
        places: HashMap::new(),
        repeats: Vec::new(),
    };
    s.value(String::new(), None);
    (JsonLocator { places: s.places }, s.repeats)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    places: HashMap<String, (Option<usize>, usize)>,
    repeats: Vec<(String, usize)>,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Consume `c` (after whitespace) if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// One value at `at`. Recursion depth is bounded by serde_json's own limit (128), which
    /// the text has already passed.
    fn value(&mut self, at: String, key: Option<usize>) {
        self.ws();
        let start = self.i;
        if self.places.insert(at.clone(), (key, start)).is_some() {
            self.repeats.push((at.clone(), key.unwrap_or(start)));
        }
        match self.peek() {
            Some(b'{') => self.object(&at),
            Some(b'[') => self.array(&at),
            Some(b'"') => {
                self.string();
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
            }
        }
    }

    fn object(&mut self, at: &str) {
        self.i += 1;
        if self.eat(b'}') {
            return;
        }
        loop {
            self.ws();
            let key_start = self.i;
            if self.peek() != Some(b'"') {
                return;
            }
            let k = self.string();
            if !self.eat(b':') {
                return;
            }
            self.value(path::key(at, &k), Some(key_start));
            if self.eat(b',') {
                continue;
            }
            self.eat(b'}');
            return;
        }
    }

    fn array(&mut self, at: &str) {
        self.i += 1;
        if self.eat(b']') {
            return;
        }
        let mut n = 0;
        loop {
            self.value(path::index(at, n), None);
            n += 1;
            if self.eat(b',') {
                continue;
            }
            self.eat(b']');
            return;
        }
    }

    /// A string starting at the opening quote, decoded.
    fn string(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => self.escape(&mut out),
                _ => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn escape(&mut self, out: &mut Vec<u8>) {
        let Some(c) = self.peek() else { return };
        self.i += 1;
        let ch = match c {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4();
                let code = if (0xD800..0xDC00).contains(&hi) && self.b.get(self.i) == Some(&b'\\') {
                    self.i += 2;
                    let lo = self.hex4();
                    0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                } else {
                    hi
                };
                char::from_u32(code).unwrap_or('\u{fffd}')
            }
            other => char::from(other),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }

    fn hex4(&mut self) -> u32 {
        let start = self.i.min(self.b.len());
        let end = (start + 4).min(self.b.len());
        let digits = std::str::from_utf8(&self.b[start..end]).unwrap_or("");
        self.i = end;
        u32::from_str_radix(digits, 16).unwrap_or(0xFFFD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::segments;

    #[test]
    fn places_and_repeats() {
        let text = "{\"Apps\": [ {\"Name\": \"a\\u00e9\", \"Ports\": [1, 2]},\n {\"Na\\\"me\": 3, \"x\": 1, \"x\": 2} ]}";
        let (loc, repeats) = scan(text);
        let at = |p: &str, key| loc.locate(&segments(p), key);
        assert_eq!(at("Apps", false), Some(9));
        assert_eq!(at("Apps", true), Some(1));
        assert_eq!(
            at("Apps[0].Ports[1]", false).map(|o| &text[o..o + 1]),
            Some("2")
        );
        assert_eq!(
            at("Apps[1].\"Na\\\"me\"", false).map(|o| &text[o..o + 1]),
            Some("3")
        );
        assert_eq!(at("Apps[0].Missing", false), at("Apps[0]", false));
        assert_eq!(repeats.len(), 1);
        assert_eq!(repeats[0].0, "Apps[1].x");
    }
}
