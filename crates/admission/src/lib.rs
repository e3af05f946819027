//! Admission: counting budgets whose slots are held by drop guards, so no path can leak one.
//! Sans-io: no sockets, no clocks.

mod budget;
mod per_key;

pub use budget::{Budget, BudgetGuard};
pub use per_key::{KeyGuard, PerKeyBudget};
