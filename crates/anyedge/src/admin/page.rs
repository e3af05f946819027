//! The dashboard's page, embedded in the binary: one HTML file, its stylesheet and its script,
//! no build step and nothing fetched from elsewhere. The same page serves the operator (`/`)
//! and an app's owners (`/apps/<app>`): the script reads which from its address and asks the
//! matching endpoints, so the page itself holds no data and needs no token.

use super::AdminBody;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

const HTML: &str = include_str!("assets/dashboard.html");
const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// Only this origin's own files, and requests to this origin; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page or asset at `path`, if it is one.
pub fn get(path: &str) -> Option<Response<AdminBody>> {
    let (body, kind) = match path {
        "/" | "/index.html" => (HTML, "text/html; charset=utf-8"),
        "/assets/dashboard.css" => (CSS, "text/css; charset=utf-8"),
        "/assets/dashboard.js" => (JS, "text/javascript; charset=utf-8"),
        p if is_app_page(p) => (HTML, "text/html; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(resp)
}

/// `/apps/<app>`: one path segment, whatever its name (the page does not say whether the
/// app exists; its data endpoint answers 403 alike for an unknown app and a wrong token).
fn is_app_page(path: &str) -> bool {
    path.strip_prefix("/apps/")
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// Bytes of the page with its assets, for the docs and the tests.
#[cfg(test)]
fn page_bytes() -> usize {
    HTML.len() + CSS.len() + JS.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        for asset in [super::HTML, super::CSS, super::JS] {
            // The SVG namespace is a name, not an address that is fetched.
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            for needle in ["http://", "https://", "//cdn", "@import"] {
                assert!(!asset.contains(needle), "{needle} in an embedded asset");
            }
        }
        assert!(
            super::page_bytes() < 64 * 1024,
            "page {} bytes",
            super::page_bytes()
        );
    }
}
