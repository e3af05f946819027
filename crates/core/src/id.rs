//! Stable identifiers that outlive catalog snapshots.

use std::fmt;
use std::sync::Arc;

/// A stable instance id: `app/instance`. Live state (in-flight counts, health) is keyed by it,
/// so it survives snapshot swaps. Work-sample targets get the synthetic id `app/host:port`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    pub fn new(app: &str, instance: &str) -> Self {
        InstanceId(format!("{app}/{instance}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the app name.
    pub fn instance(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(_, i)| i)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_part() {
        let id = InstanceId::new("six-thousand", "tcp-echo.fly.dev:6001");
        assert_eq!(id.as_str(), "six-thousand/tcp-echo.fly.dev:6001");
        assert_eq!(id.instance(), "tcp-echo.fly.dev:6001");
    }
}
