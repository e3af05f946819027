//! anyedge as a library: the command line, a node's lifecycle (start, reload, drain, the
//! control socket's hand-over to an upgraded process), the admin listener, and the embedded
//! demo, `anyedge status`, completions and the man page. `main.rs` only dispatches here.

pub mod acme;
pub mod admin;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod completions;
pub mod control;
pub mod demo;
pub mod manage;
pub mod node;
pub mod run;
pub mod status;
mod watch;
