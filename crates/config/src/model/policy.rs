//! Per-app traffic policy (`docs/config.md`, "Traffic policy"): who may connect (`access`), how
//! fast (`rate_limit`), and how many retries a failing fleet may cost (`retry_budget`).

use std::fmt;
use std::net::IpAddr;

/// An address block, IPv4 or IPv6 (`203.0.113.0/24`, `2001:db8::/32`; a bare address is a
/// /32 or /128). Stored as the network's bits and a mask over 128 bits, so a match is two
/// integer operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// IPv4 blocks match IPv4 clients only (an IPv4-mapped IPv6 client is its IPv4 address).
    v4: bool,
    bits: u128,
    mask: u128,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`, its host bits cleared; `None` when `prefix` is over the family's length.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let (v4, bits, len) = match addr {
            IpAddr::V4(a) => (true, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (false, u128::from(a), 128),
        };
        if prefix > len {
            return None;
        }
        let full = u128::MAX >> (128 - u32::from(len));
        let mask = match prefix {
            0 => 0,
            p => (u128::MAX << (len - p)) & full,
        };
        Some(Cidr {
            v4,
            bits: bits & mask,
            mask,
            prefix,
        })
    }

    /// Whether `ip` (canonical: an IPv4-mapped IPv6 address counts as its IPv4 address) is in
    /// this block.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.v4, ip.to_canonical()) {
            (true, IpAddr::V4(a)) => u128::from(u32::from(a)) & self.mask == self.bits,
            (false, IpAddr::V6(a)) => u128::from(a) & self.mask == self.bits,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr: IpAddr = if self.v4 {
            IpAddr::V4((self.bits as u32).into())
        } else {
            IpAddr::V6(self.bits.into())
        };
        write!(f, "{addr}/{}", self.prefix)
    }
}

/// `access = { allow = [...], deny = [...] }`, on an app or a service. A client is refused
/// when its address is in a `deny` block, or when `allow` is not empty and its address is in
/// none of its blocks. `deny` wins over `allow`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

/// Which rule refused a client: a `deny` block (its index), or the `allow` list it is not in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Deny(usize),
    NotAllowed,
}

impl Access {
    /// `Ok` when `ip` may pass, else the rule that refuses it.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        if let Some(i) = self.deny.iter().position(|c| c.contains(ip)) {
            return Err(Denied::Deny(i));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
            return Err(Denied::NotAllowed);
        }
        Ok(())
    }

    /// The rule's name as a metric label and in the route trace: `deny 203.0.113.9/32`, or
    /// `not_allowed`. Its values come from the config, never from a client.
    pub fn rule_name(&self, d: Denied) -> String {
        match d {
            Denied::Deny(i) => self
                .deny
                .get(i)
                .map_or_else(|| "deny".to_string(), |c| format!("deny {c}")),
            Denied::NotAllowed => "not_allowed".to_string(),
        }
    }
}

/// `rate_limit = { per_client, burst, total }`, per second, on this node. `per_client` is
/// for each client address (an IPv4 address, or an IPv6 /64), `burst` how many it may send
/// at once (default `per_client`), `total` the app's whole rate here (0: none). An HTTP
/// request and a new TCP connection each take one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// 0: no limit per client.
    pub per_client: u32,
    pub burst: u32,
    /// 0: no limit on the app's total.
    pub total: u32,
}

/// `retry_budget = { ratio, min_per_second }`: retries an app may make on this node, as a
/// fraction of its recent requests plus a floor per second (Envoy's and Finagle's retry
/// budget). On by default: 20 % with 10 per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let a: IpAddr = a.parse().unwrap_or(IpAddr::V4(0.into()));
        let p = p.parse().unwrap_or(if a.is_ipv4() { 32 } else { 128 });
        Cidr::new(a, p).unwrap_or_else(|| panic!("{s}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(0.into()))
    }

    #[test]
    fn blocks_match_their_family_and_prefix() {
        let c = cidr("203.0.113.0/24");
        assert!(c.contains(ip("203.0.113.9")));
        assert!(!c.contains(ip("203.0.114.9")));
        assert!(
            c.contains(ip("::ffff:203.0.113.1")),
            "mapped counts as IPv4"
        );
        assert!(!c.contains(ip("2001:db8::1")));
        assert_eq!(c.to_string(), "203.0.113.0/24");
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        let all4 = cidr("0.0.0.0/0");
        assert!(all4.contains(ip("1.2.3.4")));
        assert!(!all4.contains(ip("::1")));
        let one = cidr("127.0.0.2");
        assert!(one.contains(ip("127.0.0.2")));
        assert!(!one.contains(ip("127.0.0.3")));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(cidr("::1/128").contains(ip("::1")));
        assert!(cidr("::/0").contains(ip("fe80::1")));
        assert!(!cidr("::/0").contains(ip("127.0.0.1")));
        assert!(Cidr::new(ip("1.2.3.4"), 33).is_none());
        assert!(Cidr::new(ip("::"), 129).is_none());
        assert_eq!(cidr("2001:db8::1/127").to_string(), "2001:db8::/127");
    }

    #[test]
    fn deny_wins_and_allow_lists_close_the_rest() {
        let a = Access {
            allow: vec![cidr("203.0.113.0/24"), cidr("::1")],
            deny: vec![cidr("203.0.113.9/32")],
        };
        assert_eq!(a.check(ip("203.0.113.1")), Ok(()));
        assert_eq!(a.check(ip("::1")), Ok(()));
        assert_eq!(a.check(ip("203.0.113.9")), Err(Denied::Deny(0)));
        assert_eq!(a.check(ip("198.51.100.1")), Err(Denied::NotAllowed));
        assert_eq!(a.rule_name(Denied::Deny(0)), "deny 203.0.113.9/32");
        let open = Access {
            allow: vec![],
            deny: vec![cidr("127.0.0.2")],
        };
        assert_eq!(open.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(open.check(ip("127.0.0.2")), Err(Denied::Deny(0)));
    }
}
