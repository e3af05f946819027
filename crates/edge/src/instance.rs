//! Talking to an instance, for both roles: the edge sends here when the instance runs on this
//! node, the worker for every request an edge carried to it. Resolve and connect
//! ([`connect`]), pooled HTTP connections ([`pool`]) and our HTTP/1.1 client on them ([`http1`]), the request attempt and when a failed one
//! may be retried ([`attempt`]), what passive outlier detection learns from it ([`outlier`]), one
//! check of an instance ([`probe`]: active health checks and the outlier probe),
//! bodies kept for retry and replay ([`body`], past the memory limit in [`spill`] files), header rules ([`headers`]), protocol switches ([`upgrade`]), the PROXY header ([`proxy_protocol`]) and the
//! byte relay ([`relay`]). Nothing here knows about clients' connections, backhaul or roles:
//! those modules import this one, never the other way round (`scripts/layout-check`).

pub(crate) mod attempt;
pub(crate) mod body;
pub(crate) mod buffers;
pub(crate) mod connect;
pub(crate) mod h2body;
pub(crate) mod headers;
pub(crate) mod http1;
pub(crate) mod inbound;
pub(crate) mod outlier;
pub(crate) mod pool;
pub(crate) mod probe;
pub mod proxy_protocol;
pub(crate) mod relay;
pub(crate) mod spill;
pub(crate) mod upgrade;
