//! Admission: counting budgets whose slots are held by drop guards, so no path can leak one;
//! rate limits (GCRA) per client and per app; the retry budget. Sans-io: no sockets; the
//! rate limits and the retry budget take the time from their caller.

mod budget;
mod per_key;
pub mod rate;
pub mod retry;

pub use budget::{Budget, BudgetGuard};
pub use per_key::{KeyGuard, PerKeyBudget};
