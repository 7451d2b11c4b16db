//! Fault injection: seeded fault plans (`plan`) run against the real cores (`run`): the engine,
//! block pool and router placer of each simulated worker, with a gateway that migrates requests
//! whose worker fails, and invariants checked as the run goes: no request lost or duplicated,
//! every stream complete, the router's index equal to each pool at the end, pool budgets held.

mod plan;
mod run;

pub use plan::{Fault, FaultPlan, PlannedFault};
pub use run::{FaultConfig, FaultCounts, FaultRun, Violation, run_with_faults};

#[cfg(test)]
mod tests;
