//! Why a worker did not give a request to its instance: the value of the
//! `anyedge-retry-elsewhere` header ([`crate::stream::RETRY_ELSEWHERE`]) on its 503, one typed
//! enum for the worker that writes it and the edge that reads it back.
//!
//! Every reason means the instance never saw the request (the worker answers before reading
//! any of the body), so placing it again elsewhere is always safe. The edge then decides
//! whether the instance backs off ([`RetryElsewhere::backs_off`]).
//!
//! | wire text | variant | backs off | fault |
//! |---|---|---|---|
//! | `bad_request` | [`BadRequest`](RetryElsewhere::BadRequest) | yes | edge |
//! | `bad_header` | [`BadHeader`](RetryElsewhere::BadHeader) | yes | edge |
//! | `unknown_app` | [`UnknownApp`](RetryElsewhere::UnknownApp) | yes | catalog |
//! | `unknown_instance` | [`UnknownInstance`](RetryElsewhere::UnknownInstance) | yes | catalog |
//! | `wrong_app` | [`WrongApp`](RetryElsewhere::WrongApp) | yes | catalog |
//! | `no_service` | [`NoService`](RetryElsewhere::NoService) | yes | catalog |
//! | `draining` | [`Draining`](RetryElsewhere::Draining) | yes | worker |
//! | `stale_connection` | [`StaleConnection`](RetryElsewhere::StaleConnection) | yes | worker |
//! | `unhealthy` | [`Unhealthy`](RetryElsewhere::Unhealthy) | yes | instance |
//! | `connect_failed` | [`ConnectFailed`](RetryElsewhere::ConnectFailed) | yes | instance |
//! | `not_processed` | [`NotProcessed`](RetryElsewhere::NotProcessed) | yes | instance |
//! | `full` | [`Full`](RetryElsewhere::Full) | no | load |
//! | `app_overloaded` | [`AppOverloaded`](RetryElsewhere::AppOverloaded) | no | load |
//! | `not_running` | [`NotRunning`](RetryElsewhere::NotRunning) | no | power |
//! | anything else | [`Other`](RetryElsewhere::Other) (written `other`) | yes | unknown |
//!
//! Unknown text (a newer worker's reason) reads as [`RetryElsewhere::Other`] rather than
//! failing: the request is placed again all the same, and the instance backs off, as today's
//! edges do for any reason but `full`, `app_overloaded` and `not_running`. Matching is exact
//! (case, spaces). `not_running` (HTTP streams only) was added with starts over backhaul
//! (`docs/on-demand.md`): an older edge reads it as `other`, places the request elsewhere and
//! backs the instance off, as it did for the `unhealthy` workers sent before.
//! `bad_header` is only sent in a raw-TCP reply ([`crate::header::RefuseReason`], whose
//! reasons are all here), never in this header.

use crate::header::RefuseReason;

/// A worker's reason for not giving a request to its instance (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryElsewhere {
    /// The stream header is missing or unreadable, or the request is an upgrade the worker
    /// cannot read.
    BadRequest,
    /// A raw-TCP header the worker cannot read (TCP replies only).
    BadHeader,
    /// No app of that name on the worker.
    UnknownApp,
    /// No instance of that id among the worker's own.
    UnknownInstance,
    /// The instance is the worker's, but of another app (never carried across apps).
    WrongApp,
    /// No port for the instance (HTTP), or no raw-TCP service on the edge port (TCP).
    NoService,
    /// The worker is shutting down.
    Draining,
    /// The worker's pooled connection to the instance closed before the request went out.
    StaleConnection,
    /// The worker's health checks have the instance out.
    Unhealthy,
    /// The worker could not connect to the instance.
    ConnectFailed,
    /// The instance provably did not process the request (HTTP/2 `REFUSED_STREAM`, a GOAWAY
    /// above the stream, or a reused HTTP/1.1 connection closed before any response byte).
    NotProcessed,
    /// The instance is at its hard limit (`concurrency.hard_limit`).
    Full,
    /// The app's budget on the worker is used up (`limits.max_inflight`, or
    /// `limits.max_connections` for raw TCP).
    AppOverloaded,
    /// The instance has a driver on the worker and is not running (stopped, starting, stopping
    /// or failed): the edge may ask the worker for a start (`docs/on-demand.md`).
    NotRunning,
    /// A reason this node does not know (a newer node's).
    Other,
}

/// Whose fault a refusal is, for logs and for deciding what to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Nobody's: no room right now (the instance's hard limit, the app's budget on the worker).
    Load,
    /// The instance's: unhealthy, unreachable, or it dropped the request unprocessed.
    Instance,
    /// The worker node's: it is draining, or its own pooled connection went stale.
    Worker,
    /// The edge's and the worker's views of the app disagree (one catalog is behind), or the
    /// app's config gives the instance no port.
    Catalog,
    /// The edge's: what it sent cannot be read (a bug, or nodes of incompatible versions).
    Edge,
    /// Nobody's: the instance is stopped by its driver on the worker, and can be started.
    Power,
    /// Not known: a reason from a newer node.
    Unknown,
}

impl RetryElsewhere {
    /// Every reason (the order of the module docs' table).
    pub const ALL: [RetryElsewhere; 15] = [
        RetryElsewhere::BadRequest,
        RetryElsewhere::BadHeader,
        RetryElsewhere::UnknownApp,
        RetryElsewhere::UnknownInstance,
        RetryElsewhere::WrongApp,
        RetryElsewhere::NoService,
        RetryElsewhere::Draining,
        RetryElsewhere::StaleConnection,
        RetryElsewhere::Unhealthy,
        RetryElsewhere::ConnectFailed,
        RetryElsewhere::NotProcessed,
        RetryElsewhere::Full,
        RetryElsewhere::AppOverloaded,
        RetryElsewhere::NotRunning,
        RetryElsewhere::Other,
    ];

    /// The wire text (snake_case), also the metric label and the log value.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryElsewhere::BadRequest => "bad_request",
            RetryElsewhere::BadHeader => "bad_header",
            RetryElsewhere::UnknownApp => "unknown_app",
            RetryElsewhere::UnknownInstance => "unknown_instance",
            RetryElsewhere::WrongApp => "wrong_app",
            RetryElsewhere::NoService => "no_service",
            RetryElsewhere::Draining => "draining",
            RetryElsewhere::StaleConnection => "stale_connection",
            RetryElsewhere::Unhealthy => "unhealthy",
            RetryElsewhere::ConnectFailed => "connect_failed",
            RetryElsewhere::NotProcessed => "not_processed",
            RetryElsewhere::Full => "full",
            RetryElsewhere::AppOverloaded => "app_overloaded",
            RetryElsewhere::NotRunning => "not_running",
            RetryElsewhere::Other => "other",
        }
    }

    /// Read a header value back: the reason whose [`as_str`](Self::as_str) it is exactly, else
    /// [`RetryElsewhere::Other`] (never fails: the request is refused whatever the text says).
    pub fn parse(text: &str) -> RetryElsewhere {
        RetryElsewhere::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .unwrap_or(RetryElsewhere::Other)
    }

    /// [`parse`](Self::parse) of raw header bytes (non-UTF-8 is [`RetryElsewhere::Other`]).
    pub fn parse_bytes(bytes: &[u8]) -> RetryElsewhere {
        std::str::from_utf8(bytes).map_or(RetryElsewhere::Other, RetryElsewhere::parse)
    }

    /// Whether the edge should put the instance into connect backoff: every reason but having
    /// no room right now, and an instance that is not running (the edge asks for its start).
    /// An instance the worker does not know (the edge's catalog is behind),
    /// an unhealthy one, or a draining worker would otherwise keep drawing first attempts, since
    /// an instant refusal makes it look idle. Unknown reasons back off too.
    pub fn backs_off(self) -> bool {
        !matches!(
            self,
            RetryElsewhere::Full | RetryElsewhere::AppOverloaded | RetryElsewhere::NotRunning
        )
    }

    /// Whose fault the refusal is (module docs).
    pub fn fault(self) -> Fault {
        match self {
            RetryElsewhere::Full | RetryElsewhere::AppOverloaded => Fault::Load,
            RetryElsewhere::NotRunning => Fault::Power,
            RetryElsewhere::Unhealthy
            | RetryElsewhere::ConnectFailed
            | RetryElsewhere::NotProcessed => Fault::Instance,
            RetryElsewhere::Draining | RetryElsewhere::StaleConnection => Fault::Worker,
            RetryElsewhere::UnknownApp
            | RetryElsewhere::UnknownInstance
            | RetryElsewhere::WrongApp
            | RetryElsewhere::NoService => Fault::Catalog,
            RetryElsewhere::BadRequest | RetryElsewhere::BadHeader => Fault::Edge,
            RetryElsewhere::Other => Fault::Unknown,
        }
    }

    /// The raw-TCP reply code's reason, for the reasons a TCP reply can carry.
    pub fn tcp(self) -> Option<RefuseReason> {
        RefuseReason::ALL
            .into_iter()
            .find(|r| RetryElsewhere::from(*r) == self)
    }
}

impl From<RefuseReason> for RetryElsewhere {
    fn from(r: RefuseReason) -> RetryElsewhere {
        match r {
            RefuseReason::UnknownInstance => RetryElsewhere::UnknownInstance,
            RefuseReason::WrongApp => RetryElsewhere::WrongApp,
            RefuseReason::Unhealthy => RetryElsewhere::Unhealthy,
            RefuseReason::Full => RetryElsewhere::Full,
            RefuseReason::AppOverloaded => RetryElsewhere::AppOverloaded,
            RefuseReason::ConnectFailed => RetryElsewhere::ConnectFailed,
            RefuseReason::BadHeader => RetryElsewhere::BadHeader,
            RefuseReason::Draining => RetryElsewhere::Draining,
            RefuseReason::NoService => RetryElsewhere::NoService,
        }
    }
}

impl std::fmt::Display for RetryElsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_texts_are_todays() {
        let want = [
            "bad_request",
            "bad_header",
            "unknown_app",
            "unknown_instance",
            "wrong_app",
            "no_service",
            "draining",
            "stale_connection",
            "unhealthy",
            "connect_failed",
            "not_processed",
            "full",
            "app_overloaded",
            "not_running",
            "other",
        ];
        let got: Vec<_> = RetryElsewhere::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(got, want);
        for r in RetryElsewhere::ALL {
            assert_eq!(RetryElsewhere::parse(r.as_str()), r);
            assert_eq!(RetryElsewhere::parse_bytes(r.as_str().as_bytes()), r);
            assert_eq!(r.to_string(), r.as_str());
        }
    }

    #[test]
    fn unknown_text_is_other_and_matching_is_exact() {
        for text in [
            "",
            "FULL",
            "full ",
            " full",
            "Full",
            "overloaded",
            "tls",
            "alpn",
        ] {
            assert_eq!(
                RetryElsewhere::parse(text),
                RetryElsewhere::Other,
                "{text:?}"
            );
        }
        assert_eq!(
            RetryElsewhere::parse_bytes(b"full\xff"),
            RetryElsewhere::Other
        );
    }

    #[test]
    fn backoff_is_todays_instance_failed() {
        // The first edges: `!matches!(reason, "full" | "app_overloaded")` on the text; since
        // starts over backhaul, `not_running` does not back off either.
        let instance_failed =
            |reason: &str| !matches!(reason, "full" | "app_overloaded" | "not_running");
        for r in RetryElsewhere::ALL {
            assert_eq!(r.backs_off(), instance_failed(r.as_str()), "{r}");
            let load = matches!(r.fault(), Fault::Load | Fault::Power);
            assert_eq!(r.backs_off(), !load, "{r}");
        }
        for text in ["", "something_new", "FULL"] {
            assert_eq!(
                RetryElsewhere::parse(text).backs_off(),
                instance_failed(text)
            );
        }
    }

    #[test]
    fn tcp_reasons_map_both_ways() {
        for r in RefuseReason::ALL {
            let http = RetryElsewhere::from(r);
            assert_eq!(http.as_str(), r.as_str());
            assert_eq!(http.tcp(), Some(r));
            assert_eq!(r.backs_off(), http.backs_off());
            assert_eq!(r.fault(), http.fault());
        }
        let http_only = [
            RetryElsewhere::BadRequest,
            RetryElsewhere::UnknownApp,
            RetryElsewhere::StaleConnection,
            RetryElsewhere::NotProcessed,
            RetryElsewhere::NotRunning,
            RetryElsewhere::Other,
        ];
        for r in http_only {
            assert_eq!(r.tcp(), None, "{r}");
        }
        assert_eq!(
            RetryElsewhere::ALL.len(),
            RefuseReason::ALL.len() + http_only.len()
        );
    }
}
