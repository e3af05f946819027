//! Live state of an app's traffic policy on this node: its rate-limit buckets and its retry
//! budget. Carried across snapshots like the app's budgets, so a reload that changes a limit
//! keeps what each client has used.

use anyedge_admission::rate::{ClientRates, Gcra, Limited, Rate};
use anyedge_admission::retry::RetryBudget;
use anyedge_config::RateLimit;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Instant;

/// Which limit refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// The client's own rate (`per_client`).
    Client,
    /// The app's total on this node (`total`).
    Total,
}

impl LimitScope {
    pub const ALL: [LimitScope; 2] = [LimitScope::Client, LimitScope::Total];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Client => "client",
            LimitScope::Total => "total",
        }
    }
}

pub struct PolicyLive {
    /// Taken at the first request of an app with `per_client` set: [`ClientRates::BYTES`].
    clients: OnceLock<ClientRates>,
    total: Gcra,
    pub retries: RetryBudget,
}

impl Default for PolicyLive {
    fn default() -> Self {
        PolicyLive {
            clients: OnceLock::new(),
            total: Gcra::default(),
            retries: RetryBudget::new(now_nanos()),
        }
    }
}

impl PolicyLive {
    /// One request or new connection from `ip` under `limit`, at `now`: `Ok`, or which limit
    /// refuses it and for how long. The client's own limit is taken first, so a flooding
    /// client does not use up the app's total.
    pub fn admit(
        &self,
        limit: &RateLimit,
        ip: IpAddr,
        now: u64,
    ) -> Result<(), (LimitScope, Limited)> {
        if limit.per_client > 0 {
            let clients = self.clients.get_or_init(ClientRates::new);
            let rate = Rate::new(limit.per_client, limit.burst);
            clients
                .check(ip, rate, now)
                .map_err(|l| (LimitScope::Client, l))?;
        }
        if limit.total > 0 {
            let rate = Rate::new(limit.total, limit.total);
            self.total
                .check(rate, now)
                .map_err(|l| (LimitScope::Total, l))?;
        }
        Ok(())
    }

    /// Clients forgotten before their bucket was full again (see [`ClientRates`]).
    pub fn clients_forgotten(&self) -> u64 {
        self.clients.get().map_or(0, ClientRates::forgotten)
    }
}

/// The clock the policy's state runs on: nanoseconds since the process's first use of it,
/// plus a minute (its state takes 0 as "never used").
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64 + 60_000_000_000
}
