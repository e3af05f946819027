//! Validation shared by both file formats: single values (names, hostnames, addresses,
//! durations, handler lists) and the rules that span apps (ports, hostnames, names).

pub(crate) mod claims;
pub(crate) mod values;
