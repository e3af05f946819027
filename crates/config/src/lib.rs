//! Config file formats (anyedge TOML and the work-sample JSON), parsed into file structs and
//! validated into one internal [`Config`]. Every problem is reported with its place in the file.
//!
//! The pipeline: recognise the format by content; parse the syntax (toml_edit keeps spans; the
//! JSON gets a span-recording scanner of its own); deserialize each block into its file struct,
//! collecting every unknown key; validate values and the rules across apps; return the `Config`
//! only if no problem was found, else every problem at once. `docs/config.md` is the reference.

mod de;
mod defaults;
pub mod diagnostics;
#[doc(hidden)]
pub mod fuzz;
mod json;
pub mod model;
mod path;
mod report;
pub mod rules;
mod toml;
mod validate;

pub use diagnostics::{Diagnostic, Diagnostics};
pub use model::*;

use std::path::Path;

/// Which format `text` is in: a document whose first non-whitespace character is `{` is the
/// work-sample JSON; anything else is anyedge TOML.
pub fn detect_format(text: &str) -> Format {
    match strip_bom(text).trim_start().starts_with('{') {
        true => Format::WorkSample,
        false => Format::Toml,
    }
}

/// Parse and validate config text. `origin` names the file in diagnostics.
/// The format is recognised by content: a document starting with `{` is the work-sample JSON.
/// Relative paths in the file are kept as written; see [`parse_with_base`].
pub fn parse(text: &str, origin: &str) -> Result<Config, Diagnostics> {
    parse_with_base(text, origin, None)
}

/// Like [`parse`], resolving relative file paths (certificates, keys, CA files, state dir)
/// against `base_dir`, normally the config file's directory.
pub fn parse_with_base(
    text: &str,
    origin: &str,
    base_dir: Option<&Path>,
) -> Result<Config, Diagnostics> {
    let text = strip_bom(text);
    match detect_format(text) {
        Format::WorkSample => json::parse(text, origin),
        Format::Toml => toml::parse(text, origin, base_dir),
    }
}

/// Parse and validate a TOML file of `[[apps]]` blocks alone, the input of
/// `anyedge apps put FILE`: no other section, and no instances (workers register their own).
pub fn parse_apps(
    text: &str,
    origin: &str,
    base_dir: Option<&Path>,
) -> Result<Vec<App>, Diagnostics> {
    toml::parse_apps(strip_bom(text), origin, base_dir)
}

/// Like [`parse_apps`] for values written by other (possibly newer) nodes: unknown keys are
/// not problems but are returned as key paths beside the apps, so a caller can log them.
/// Relative paths stay as written. The etcd store decodes app values with this.
pub fn parse_apps_lenient(
    text: &str,
    origin: &str,
) -> Result<(Vec<App>, Vec<String>), Diagnostics> {
    toml::parse_apps_lenient(strip_bom(text), origin)
}

/// Read and validate a config file; relative paths in it are taken from its directory.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_with_base(&text, &origin, base_dir(path)),
        Err(e) => Err(Diagnostics::single(Diagnostic::new(
            &origin,
            "",
            format!("cannot read: {e}"),
        ))),
    }
}

/// The directory relative paths in the file at `path` are taken from.
fn base_dir(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}
