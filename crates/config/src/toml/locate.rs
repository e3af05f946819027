//! Finds a key path in a parsed TOML document (toml_edit keeps each key's and value's span).

use toml_edit::{Item, Table, Value};

use crate::path::Seg;
use crate::report::Locate;

/// Maps `apps[1].services[0].ports[2].port` to a byte offset in the source.
pub(crate) struct TomlLocator<'a> {
    pub root: &'a Table,
}

#[derive(Clone, Copy)]
enum Cur<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

impl Locate for TomlLocator<'_> {
    fn locate(&self, path: &[Seg], want_key: bool) -> Option<usize> {
        let mut best = None;
        let mut cur = Cur::Table(self.root);
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let next = match (cur, seg) {
                (cur, Seg::Key(k)) => match entry(cur, k) {
                    Some((key_span, item)) => {
                        let item_span = item.span().map(|s| s.start);
                        best = if last && want_key {
                            key_span.or(item_span)
                        } else {
                            item_span.or(key_span)
                        }
                        .or(best);
                        Cur::Item(item)
                    }
                    None => break,
                },
                (Cur::Item(Item::ArrayOfTables(a)), Seg::Index(n)) => match a.get(*n) {
                    Some(t) => {
                        best = t.span().map(|s| s.start).or(best);
                        Cur::Table(t)
                    }
                    None => break,
                },
                (
                    Cur::Item(Item::Value(Value::Array(a))) | Cur::Value(Value::Array(a)),
                    Seg::Index(n),
                ) => match a.get(*n) {
                    Some(v) => {
                        best = v.span().map(|s| s.start).or(best);
                        Cur::Value(v)
                    }
                    None => break,
                },
                _ => break,
            };
            cur = next;
        }
        best
    }
}

/// The key's span and the item under `key` in a table-like `cur`.
fn entry<'a>(cur: Cur<'a>, key: &str) -> Option<(Option<usize>, &'a Item)> {
    let (k, item) = match cur {
        Cur::Table(t) | Cur::Item(Item::Table(t)) => t.get_key_value(key)?,
        Cur::Item(Item::Value(Value::InlineTable(t))) | Cur::Value(Value::InlineTable(t)) => {
            t.get_key_value(key)?
        }
        _ => return None,
    };
    Some((k.span().map(|s| s.start), item))
}
