//! The worker role: edges carry requests and connections for this node's instances to it over
//! mutual-TLS backhaul. The listener ([`listener`]) tells HTTP/2 streams ([`http`]) from raw TCP
//! ([`tcp`]) by ALPN; the worker is the truth about its instances and admits every request
//! itself ([`admit`]), answering "retry elsewhere" before reading any body when it cannot take
//! it; it streams its instances' load and power states to every edge it serves ([`feed`]), and
//! starts an instance with a driver when an edge asks ([`start`]). It reaches instances
//! through `crate::instance`, as the edge does, and imports nothing of the client-facing server
//! or of the edge's side of backhaul (`scripts/layout-check`).

mod admit;
pub(crate) mod feed;
mod http;
mod listener;
mod start;
mod tcp;

pub(crate) use listener::{start, BackhaulListener};
