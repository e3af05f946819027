//! Whose fault a failure is: decides the log level, the access log's field and whether a retry
//! elsewhere helps. Every failure that reaches the HTTP error map carries a typed cause that
//! answers it (`anyedge_edge`'s `Cause`).

/// The party responsible for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The client sent something wrong or went away.
    Client,
    /// The instance (or the path to it) failed; another instance may do better.
    Instance,
    /// The worker that runs the instance could not take the request (no room, draining, or a
    /// backhaul stream to it failed).
    Worker,
    /// This node failed: a limit of its own, a stale catalog, an exhausted resource, a bug.
    Node,
    /// The configuration asks for what cannot be done (a body past the replay limit, a replay
    /// into an app that does not accept it).
    Config,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Client,
        Fault::Instance,
        Fault::Worker,
        Fault::Node,
        Fault::Config,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Instance => "instance",
            Fault::Worker => "worker",
            Fault::Node => "node",
            Fault::Config => "config",
        }
    }
}
