//! What a request or an instance's response asks of placement: the request's routing headers
//! (`P-Prefer-Region`, `P-Force-Region`, `P-Prefer-Instance-Id`, `P-Force-Instance-Id`, and the
//! `P-Debug: route` trace) and a response's `P-Replay`. Parsing only; the proxy acts on them.

use crate::instance::headers::Prefixed;
use anyedge_catalog::AppEntry;
use anyedge_placement::Constraints;
use http::{HeaderMap, HeaderValue};
use std::time::Duration;

/// Placement wishes by name, resolved against one app with [`Wishes::resolve`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Wishes {
    pub force_regions: Vec<String>,
    pub prefer_regions: Vec<String>,
    pub force_instance: Option<String>,
    pub prefer_instance: Option<String>,
}

impl Wishes {
    pub fn is_empty(&self) -> bool {
        *self == Wishes::default()
    }

    /// Take the routing headers out of a request (they are for the proxy, not the instance).
    /// Returns the wishes and whether a route trace was asked for with a token.
    pub fn take_from(headers: &mut HeaderMap, names: &Prefixed) -> (Wishes, Option<HeaderValue>) {
        let mut w = Wishes::default();
        // Most requests carry none: look before removing anything.
        if !names.any_in(headers) {
            return (w, None);
        }
        let list = |v: Option<HeaderValue>| -> Vec<String> {
            v.and_then(|v| v.to_str().ok().map(str::to_owned))
                .map(|s| {
                    s.split(',')
                        .map(|r| r.trim().to_ascii_lowercase())
                        .filter(|r| !r.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let one = |v: Option<HeaderValue>| -> Option<String> {
            v.and_then(|v| v.to_str().ok().map(|s| s.trim().to_owned()))
                .filter(|s| !s.is_empty())
        };
        w.force_regions = list(headers.remove(&names.force_region));
        w.prefer_regions = list(headers.remove(&names.prefer_region));
        w.force_instance = one(headers.remove(&names.force_instance_id));
        w.prefer_instance = one(headers.remove(&names.prefer_instance_id));
        let debug = headers.remove(&names.debug);
        let token = headers.remove(&names.debug_token);
        let traced = debug
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("route")));
        (w, token.filter(|_| traced))
    }

    /// The wishes as indices into `app`'s regions and instances. A name the app does not have
    /// matches nothing (so a forced one leaves no candidate, a preferred one is unmet).
    pub fn resolve(&self, app: &AppEntry) -> Resolved {
        let region = |r: &String| app.region_index(r).unwrap_or(u32::MAX);
        let instance = |i: &String| app.instance_index(i).unwrap_or(usize::MAX);
        Resolved {
            force_regions: self.force_regions.iter().map(region).collect(),
            prefer_regions: self.prefer_regions.iter().map(region).collect(),
            force_instance: self.force_instance.as_ref().map(instance),
            prefer_instance: self.prefer_instance.as_ref().map(instance),
        }
    }

    /// What `P-Preferred-Instance-Unavailable` says when a preference was not met.
    pub fn unmet_text(&self) -> String {
        match &self.prefer_instance {
            Some(i) => i.clone(),
            None => self.prefer_regions.join(","),
        }
    }
}

/// [`Wishes`] resolved against one app; lends out [`Constraints`].
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    force_regions: Vec<u32>,
    prefer_regions: Vec<u32>,
    force_instance: Option<usize>,
    prefer_instance: Option<usize>,
}

impl Resolved {
    pub fn constraints(&self) -> Constraints<'_> {
        Constraints {
            force_regions: &self.force_regions,
            prefer_regions: &self.prefer_regions,
            force_instance: self.force_instance,
            prefer_instance: self.prefer_instance,
        }
    }
}

/// Where a replayed request goes back to when its replay fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Only the replaying instance.
    ForceSelf,
    /// The replaying instance if it can take it, else anywhere.
    PreferSelf,
}

/// An instance's `P-Replay` response header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Replay {
    pub regions: Vec<String>,
    pub instance: Option<String>,
    pub prefer_instance: Option<String>,
    pub app: Option<String>,
    pub elsewhere: bool,
    pub state: Option<String>,
    pub timeout: Option<Duration>,
    pub fallback: Option<Fallback>,
}

impl Replay {
    /// Parse `region=..;instance=..;prefer_instance=..;app=..;elsewhere=true;state=..;
    /// timeout=..;fallback=..`. Unknown fields are ignored (a newer instance may send more);
    /// a value that cannot be understood makes the whole header invalid.
    pub fn parse(value: &str) -> Result<Replay, String> {
        let mut r = Replay::default();
        for field in value.split(';') {
            let field = field.trim();
            if field.is_empty() {
                continue;
            }
            let (key, val) = field
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("field `{field}` has no value"))?;
            if val.is_empty() {
                return Err(format!("field `{key}` is empty"));
            }
            match key.to_ascii_lowercase().as_str() {
                "region" => {
                    r.regions = val
                        .split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect();
                }
                "instance" => r.instance = Some(val.to_owned()),
                "prefer_instance" => r.prefer_instance = Some(val.to_owned()),
                "app" => r.app = Some(val.to_owned()),
                "elsewhere" => {
                    r.elsewhere = match val {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(format!("elsewhere=`{val}`: expected true or false")),
                    }
                }
                "state" => r.state = Some(val.to_owned()),
                "timeout" => r.timeout = Some(parse_timeout(val)?),
                "fallback" => {
                    r.fallback = Some(match val {
                        "force_self" => Fallback::ForceSelf,
                        "prefer_self" => Fallback::PreferSelf,
                        _ => {
                            return Err(format!(
                                "fallback=`{val}`: expected force_self or prefer_self"
                            ))
                        }
                    })
                }
                _ => {}
            }
        }
        Ok(r)
    }

    /// The placement wishes of the replayed request.
    pub fn wishes(&self) -> Wishes {
        Wishes {
            force_regions: self.regions.clone(),
            prefer_regions: Vec::new(),
            force_instance: self.instance.clone(),
            prefer_instance: self.prefer_instance.clone(),
        }
    }
}

/// `500ms`, `5s`, `1m`, or a bare number of milliseconds; capped at one hour.
fn parse_timeout(v: &str) -> Result<Duration, String> {
    let d = match v.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => humantime::parse_duration(v).map_err(|e| format!("timeout=`{v}`: {e}"))?,
    };
    Ok(d.min(Duration::from_secs(3600)))
}

/// A header value from text that may hold anything an instance or client sent: anything but
/// visible ASCII and spaces becomes `_`, so the value is always valid, readable text.
pub(crate) fn header_text(s: &str) -> HeaderValue {
    let clean = |c: char| c.is_ascii_graphic() || c == ' ';
    if s.chars().all(clean) {
        if let Ok(v) = HeaderValue::try_from(s) {
            return v;
        }
    }
    let text: String = s.chars().map(|c| if clean(c) { c } else { '_' }).collect();
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_fields_parse() {
        let r = Replay::parse(
            "region=SYD, ams;instance=i-1;prefer_instance=i-2;app=api;elsewhere=true;state=w1;timeout=2s;fallback=prefer_self;future=x",
        )
        .expect("valid");
        assert_eq!(r.regions, ["syd", "ams"]);
        assert_eq!(r.instance.as_deref(), Some("i-1"));
        assert_eq!(r.prefer_instance.as_deref(), Some("i-2"));
        assert_eq!(r.app.as_deref(), Some("api"));
        assert!(r.elsewhere);
        assert_eq!(r.state.as_deref(), Some("w1"));
        assert_eq!(r.timeout, Some(Duration::from_secs(2)));
        assert_eq!(r.fallback, Some(Fallback::PreferSelf));
        assert_eq!(
            Replay::parse("timeout=250").expect("ms").timeout,
            Some(Duration::from_millis(250))
        );
        assert_eq!(Replay::parse("").expect("empty"), Replay::default());
    }

    #[test]
    fn bad_replay_values_are_refused() {
        for bad in [
            "region",
            "region=",
            "elsewhere=maybe",
            "timeout=soon",
            "fallback=anywhere",
        ] {
            assert!(Replay::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routing_headers_are_taken_out() {
        let names = Prefixed::new("anyedge");
        let mut h = HeaderMap::new();
        h.insert("anyedge-force-region", HeaderValue::from_static("ORD, syd"));
        h.insert(
            "anyedge-prefer-instance-id",
            HeaderValue::from_static("a-1"),
        );
        h.insert("anyedge-debug", HeaderValue::from_static("route"));
        h.insert("anyedge-debug-token", HeaderValue::from_static("secret"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        let (w, token) = Wishes::take_from(&mut h, &names);
        assert_eq!(w.force_regions, ["ord", "syd"]);
        assert_eq!(w.prefer_instance.as_deref(), Some("a-1"));
        assert_eq!(token, Some(HeaderValue::from_static("secret")));
        assert_eq!(h.len(), 1, "only x-other is left");
        let (w, token) = Wishes::take_from(&mut h, &names);
        assert!(w.is_empty() && token.is_none());
    }

    proptest::proptest! {
        /// Instances send anything: parsing never panics, and what parses has no empty names.
        #[test]
        fn replay_parsing_never_panics(value in ".{0,200}") {
            if let Ok(r) = Replay::parse(&value) {
                proptest::prop_assert!(r.regions.iter().all(|s| !s.is_empty()));
            }
        }

        #[test]
        fn header_text_always_makes_a_value(value in ".{0,100}") {
            let v = header_text(&value);
            proptest::prop_assert!(v.to_str().is_ok());
        }
    }

    #[test]
    fn a_token_without_debug_route_asks_nothing() {
        let names = Prefixed::new("fly");
        let mut h = HeaderMap::new();
        h.insert("fly-debug-token", HeaderValue::from_static("secret"));
        let (_, token) = Wishes::take_from(&mut h, &names);
        assert!(token.is_none());
        assert!(h.is_empty(), "the token never reaches the instance");
    }
}
