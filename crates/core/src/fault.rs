//! Whose fault an error is: decides log level, metric label and whether a retry elsewhere helps.

/// The party responsible for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong or went away.
    Client,
    /// The instance (or the path to it) failed; another instance may do better.
    Instance,
    /// We failed: a limit, a bug, an exhausted resource.
    Proxy,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Instance => "instance",
            Fault::Proxy => "proxy",
        }
    }
}
