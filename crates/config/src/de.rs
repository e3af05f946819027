//! Serde glue: deserialize one block of a file into its file struct, reporting every unknown key
//! (through `serde_ignored`, so one unknown key does not hide the next) and the type error, if
//! any, with its key path (through `serde_path_to_error`).

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{DocumentMut, Item, Value};

use crate::path::{self, Seg};
use crate::report::Report;

/// Deserialize one TOML item found at `base`. Type errors carry toml_edit's span.
pub(crate) fn toml_item<T: DeserializeOwned>(
    item: &Item,
    base: &str,
    report: &mut Report<'_>,
) -> Option<T> {
    let offset = |e: &toml_edit::de::Error| e.span().map(|s| s.start);
    let message = |e: &toml_edit::de::Error| e.message().to_string();
    match item.clone() {
        Item::Table(t) => {
            let de = toml_edit::de::Deserializer::from(DocumentMut::from(t));
            run(de, base, report, offset, message)
        }
        Item::ArrayOfTables(a) => {
            let de = Value::Array(a.into_array()).into_deserializer();
            run(de, base, report, offset, message)
        }
        Item::Value(v) => run(v.into_deserializer(), base, report, offset, message),
        Item::None => {
            report.error(base, "missing value");
            None
        }
    }
}

/// Deserialize one JSON value found at `base`. The JSON locator places its errors.
pub(crate) fn json_value<T: DeserializeOwned>(
    value: serde_json::Value,
    base: &str,
    report: &mut Report<'_>,
) -> Option<T> {
    run(
        value,
        base,
        report,
        |_| None,
        |e: &serde_json::Error| e.to_string(),
    )
}

fn run<'de, D, T>(
    de: D,
    base: &str,
    report: &mut Report<'_>,
    offset: impl Fn(&D::Error) -> Option<usize>,
    message: impl Fn(&D::Error) -> String,
) -> Option<T>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let mut ignored = Vec::new();
    let result = {
        let mut on_ignored = |p: serde_ignored::Path<'_>| {
            let mut segs = Vec::new();
            ignored_segments(&p, &mut segs);
            ignored.push(segs);
        };
        let de = serde_ignored::Deserializer::new(de, &mut on_ignored);
        serde_path_to_error::deserialize::<_, T>(de)
    };
    for segs in ignored {
        let p = path::join(base, &segs);
        let name = match segs.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => p.clone(),
        };
        report.unknown_key(&p, format!("unknown key `{name}`"));
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let segs: Vec<Seg> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                    _ => None,
                })
                .collect();
            let p = path::join(base, &segs);
            report.error_at(&p, offset(e.inner()), plain_types(&message(e.inner())));
            None
        }
    }
}

fn ignored_segments(p: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
    use serde_ignored::Path;
    match p {
        Path::Root => {}
        Path::Seq { parent, index } => {
            ignored_segments(parent, out);
            out.push(Seg::Index(*index));
        }
        Path::Map { parent, key } => {
            ignored_segments(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_segments(parent, out),
    }
}

/// Serde names Rust types ("expected u16"); a config author wants TOML/JSON words.
fn plain_types(message: &str) -> String {
    let mut m = message.to_string();
    for int in ["u64", "u32", "u16", "u8", "usize"] {
        m = m.replace(
            &format!("expected {int}"),
            "expected a non-negative integer",
        );
    }
    for int in ["i64", "i32"] {
        m = m.replace(&format!("expected {int}"), "expected an integer");
    }
    if let Some(i) = m.find("expected struct ") {
        let rest = &m[i + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !c.is_alphanumeric())
            .unwrap_or(rest.len());
        m = format!("{}expected a table{}", &m[..i], &rest[end..]);
    }
    m.replace("expected f64", "expected a number")
}
