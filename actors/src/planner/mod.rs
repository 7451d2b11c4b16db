//! The planner: sizes the prefill and decode pools from load and SLOs. `policy` is its sans-IO
//! core (what the last interval saw in, pool sizes and reasons out); the actor that runs it on a
//! cluster and the simulator's use of it build on that core.

pub mod policy;

pub use policy::{Capacity, Decision, Interval, Planner, PlannerConfig, PlannerMode, Pools, Slo};
