//! Checks of single values. Each returns the parsed value or the message for the diagnostic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{Handler, HostPort};

/// The handler lists a port may have, in this order (outermost layer first).
pub(crate) const HANDLER_LISTS: [&[Handler]; 6] = [
    &[],
    &[Handler::ProxyProto],
    &[Handler::Tls],
    &[Handler::Tls, Handler::ProxyProto],
    &[Handler::Http],
    &[Handler::Tls, Handler::Http],
];

/// App, node, region and instance names: `[A-Za-z0-9._-]{1,63}`.
pub(crate) fn name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    let len = s.chars().count();
    if len > 63 {
        return Err(format!(
            "{what} `{s}` is too long ({len} characters, at most 63)"
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{what} `{s}` may only contain letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// An app hostname, lower-cased: DNS labels, optionally behind one leading `*.` wildcard.
pub(crate) fn hostname(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let bad = |why: &str| Err(format!("invalid hostname `{s}`: {why}"));
    if lower.is_empty() {
        return bad("it is empty");
    }
    if lower.len() > 253 {
        return bad("longer than 253 characters");
    }
    let rest = lower.strip_prefix("*.").unwrap_or(&lower);
    if rest.contains('*') {
        return bad("a wildcard is only allowed as the whole first label (`*.example.com`)");
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return bad("empty label (two dots in a row, or a leading or trailing dot)");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("labels may only contain letters, digits and `-`");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not start or end with `-`");
        }
    }
    Ok(lower)
}

/// A humantime duration such as `5s` or `250ms`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

/// A TCP port, 1 to 65535.
pub(crate) fn port(p: i64) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("port {p} is out of range (1-65535)")),
    }
}

/// An `IP:port` socket address.
pub(crate) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "invalid socket address `{s}`: expected IP:port such as 127.0.0.1:9180 or [::1]:9180"
        )
    })
}

/// A bare IP address (a port's `bind`).
pub(crate) fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| {
        format!("invalid bind address `{s}`: expected an IP address such as 127.0.0.2 or ::1")
    })
}

/// `host[:port]`, IPv6 in brackets. With `port_required`, the port must be there.
pub(crate) fn host_port(s: &str, port_required: bool) -> Result<HostPort, String> {
    let bad = |why: String| Err(format!("invalid address `{s}`: {why}"));
    if s.is_empty() {
        return Err("address is empty".to_string());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return bad("missing `]` after the IPv6 address".into());
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return bad(format!("`{inside}` is not an IPv6 address"));
        }
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (inside, Some(p)),
                None => return bad("expected `:port` after `]`".into()),
            },
        }
    } else if s.matches(':').count() > 1 {
        return bad("write IPv6 addresses in brackets, like [::1]:8080".into());
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return bad("the host is empty".into());
    }
    if !s.starts_with('[') && host.parse::<Ipv4Addr>().is_err() && !dns_name(host) {
        return bad(format!("`{host}` is not a host name or IP address"));
    }
    let port = match port {
        None if port_required => return bad("a port is required (host:port)".into()),
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => Some(p),
            _ => return bad(format!("invalid port `{p}` (1-65535)")),
        },
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// A host name to resolve: dot-separated labels of letters, digits, `-` and `_`.
fn dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A SHA-256 digest written as 64 hex digits.
pub(crate) fn sha256_hex(s: &str) -> Result<[u8; 32], String> {
    let bad = || {
        Err(format!(
            "invalid token hash `{s}`: expected 64 hex digits (the SHA-256 of the token)"
        ))
    };
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad();
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&s[2 * i..2 * i + 2], 16) {
            Ok(b) => *byte = b,
            Err(_) => return bad(),
        }
    }
    Ok(out)
}

/// A count that must be at least `min` and fit in a `u32`.
pub(crate) fn count_u32(v: u64, min: u64) -> Result<u32, String> {
    if v < min {
        return Err(format!("must be at least {min}, got {v}"));
    }
    u32::try_from(v).map_err(|_| format!("{v} is too large (at most {})", u32::MAX))
}

/// A count that must be at least `min`.
pub(crate) fn count_usize(v: u64, min: u64) -> Result<usize, String> {
    if v < min {
        return Err(format!("must be at least {min}, got {v}"));
    }
    usize::try_from(v).map_err(|_| format!("{v} is too large"))
}

/// A handler name.
pub(crate) fn handler(s: &str) -> Result<Handler, String> {
    match s {
        "tls" => Ok(Handler::Tls),
        "http" => Ok(Handler::Http),
        "proxy_proto" => Ok(Handler::ProxyProto),
        _ => Err(format!(
            "unknown handler `{s}` (known: \"tls\", \"http\", \"proxy_proto\")"
        )),
    }
}

/// Whether `list` is one of [`HANDLER_LISTS`]; the message names the allowed lists.
pub(crate) fn handler_list(list: &[Handler]) -> Result<(), String> {
    if HANDLER_LISTS.contains(&list) {
        return Ok(());
    }
    let allowed: Vec<String> = HANDLER_LISTS.iter().map(|l| show_handlers(l)).collect();
    Err(format!(
        "unsupported handler list {}; use one of {}",
        show_handlers(list),
        allowed.join(", ")
    ))
}

/// `["tls", "http"]`, as written in the file.
pub(crate) fn show_handlers(list: &[Handler]) -> String {
    let names: Vec<String> = list.iter().map(|h| format!("\"{}\"", h.as_str())).collect();
    format!("[{}]", names.join(", "))
}

/// A file path, relative ones taken from `base` (the config file's directory) when known.
pub(crate) fn file_path(s: &str, base: Option<&Path>) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("path is empty".to_string());
    }
    let p = PathBuf::from(s);
    Ok(match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    })
}

/// `[node] steering`.
pub(crate) fn steering(s: &str) -> Result<crate::model::Steering, String> {
    match s {
        "sockets" => Ok(crate::model::Steering::Sockets),
        "sk_lookup" => Ok(crate::model::Steering::SkLookup),
        other => Err(format!(
            "unknown steering `{other}` (known: \"sockets\", \"sk_lookup\")"
        )),
    }
}

/// `[node] bpf_pin_dir`: an absolute path (pins are system-wide: a path relative to the
/// config file would move with it).
pub(crate) fn bpf_pin_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(format!(
            "`{s}` is not an absolute path (a directory on a BPF filesystem, e.g. /sys/fs/bpf/anyedge)"
        ));
    }
    Ok(p)
}

/// `[http] replay_spill_dir`: an absolute path (the node may run from any directory, and a
/// path relative to the config file would move with it). Whether it exists and is writable
/// is checked at start-up, where it is created if missing.
pub(crate) fn spill_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(format!(
            "`{s}` is not an absolute path (a directory on a local disk, e.g. /var/tmp/anyedge-spill)"
        ));
    }
    if p.parent().is_none() {
        return Err("`/` cannot be the spill directory: name one of its own".to_string());
    }
    Ok(p)
}

/// A byte count written as a string: digits with an optional unit `B`, `KiB`, `MiB`, `GiB` or
/// `TiB` (`"1GiB"`, `"512 MiB"`). (A bare integer is a count of bytes too.)
pub(crate) fn byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start();
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => {
            return Err(format!(
                "invalid size {text:?}: a number of bytes, or digits with B, KiB, MiB, GiB or TiB (e.g. \"1GiB\")"
            ))
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: it must start with digits (e.g. \"1GiB\")"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// A Unix socket's path: the kernel takes at most 107 bytes (`sun_path`, with its NUL), and
/// an upgrade binds a sibling path a few bytes longer (`.new`), so 100 is the bound.
pub(crate) fn unix_socket_path(p: PathBuf) -> Result<PathBuf, String> {
    const MAX: usize = 100;
    let len = p.as_os_str().len();
    if len > MAX {
        return Err(format!(
            "the path is {len} bytes long; a Unix socket's path may have {MAX} at most"
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let hp = |h: &str, p| HostPort {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            host_port("127.0.0.1:80", true),
            Ok(hp("127.0.0.1", Some(80)))
        );
        assert_eq!(host_port("[::1]:80", true), Ok(hp("::1", Some(80))));
        assert_eq!(host_port("[::1]", false), Ok(hp("::1", None)));
        assert_eq!(host_port("db_1.local", false), Ok(hp("db_1.local", None)));
        for bad in [
            "", ":80", "a b:c", "h:0", "h:70000", "::1", "[::1", "[x]:1", "h:", "a..b",
        ] {
            assert!(host_port(bad, false).is_err(), "{bad}");
        }
        assert!(host_port("h", true).is_err());
    }

    #[test]
    fn hostnames() {
        assert_eq!(
            hostname("Hello.Example.COM"),
            Ok("hello.example.com".into())
        );
        assert_eq!(hostname("*.example.com"), Ok("*.example.com".into()));
        for bad in [
            "", "a..b", "-a.com", "a_b.com", "*", "a.*.com", "x.com.", "**.a",
        ] {
            assert!(hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_and_handlers() {
        let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(sha256_hex(h).map(|b| b[0]), Ok(0x9f));
        assert!(sha256_hex(&h[1..]).is_err());
        assert!(sha256_hex(&h.replace('9', "g")).is_err());
        assert!(handler_list(&[Handler::Http, Handler::Tls]).is_err());
        assert!(handler_list(&[Handler::Tls, Handler::Http]).is_ok());
    }
}
