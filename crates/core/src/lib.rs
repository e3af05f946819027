//! Shared vocabulary of anyedge: stable ids, whose fault an error is, and the drain signal.

pub mod control;
pub mod drain;
pub mod fault;
pub mod id;

pub use drain::{ConnGuard, Drain};
pub use fault::Fault;
pub use id::InstanceId;
