//! Client-facing: the edge's listening sockets, opened and closed by diffing snapshots, with
//! their admission checks ([`listeners`]), or one listener per family with every port steered
//! to it by `sk_lookup` ([`steered`]), raw TCP from clients ([`tcp`]) and the HTTP server
//! clients talk to ([`http`]: routing and forwarding, and hyper's HTTP/2 server; [`http1`]: our
//! HTTP/1.1 server). Instances are reached through `crate::instance` (this node) or
//! `crate::backhaul` (another node's worker).

pub(crate) mod http;
pub(crate) mod http1;
pub(crate) mod listeners;
pub(crate) mod steered;
pub(crate) mod tcp;
