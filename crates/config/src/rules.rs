//! The value rules other crates need outside a file: the etcd store checks values written by
//! other nodes with the same rules a config file gets.

use crate::model::{HostPort, Instance, Service};
use crate::validate::values;

/// A name (app, node id, region, instance id): 1 to 63 letters, digits, `.`, `_` and `-`.
/// `what` names it in the message.
pub fn name(what: &str, s: &str) -> Result<(), String> {
    values::name(what, s)
}

/// `host[:port]`, IPv6 in brackets.
pub fn host_port(s: &str) -> Result<HostPort, String> {
    values::host_port(s, false)
}

/// The instance-port rule (`docs/config.md`): a port in the address only when the app has at
/// most one service; without one, every service needs an `internal_port`.
pub fn instance_port(app: &str, instance: &Instance, services: &[Service]) -> Result<(), String> {
    match instance.address.port {
        Some(port) if services.len() > 1 => Err(format!(
            "instance `{}` names port {port}, but app `{app}` has {} services: with more than one service an instance's address must not name a port (each service reaches it on its internal_port)",
            instance.id,
            services.len()
        )),
        Some(_) => Ok(()),
        None => match services.iter().position(|s| s.internal_port.is_none()) {
            Some(k) => Err(format!(
                "instance `{}` has no port, and service {k} of app `{app}` has no internal_port: add :PORT to the address or set internal_port",
                instance.id
            )),
            None => Ok(()),
        },
    }
}
