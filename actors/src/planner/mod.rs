//! The planner: sizes the prefill and decode pools from load and SLOs. `policy` is its sans-IO
//! core (what the last interval saw in, pool sizes and reasons out); the actor that runs it on a
//! cluster and the simulator's use of it build on that core.

pub mod actor;
pub mod policy;
pub mod window;

pub use actor::{PlannerActor, PlannerArgs, PlannerMsg};
pub use policy::{Capacity, Decision, Interval, Planner, PlannerConfig, PlannerMode, Pools, Slo};
pub use window::LatencyWindow;

/// The planner core's settings from `[planner]`, with the router's own disaggregation threshold
/// as the one to keep while the prefill pool keeps up.
pub fn config_from(
    section: &runtime::config::PlannerSection,
    router: &runtime::config::RouterSection,
    devices: usize,
) -> PlannerConfig {
    let mode = if section.mode == "throughput" { PlannerMode::Throughput } else { PlannerMode::Load };
    let slo = Slo { ttft: section.slo_ttft.get(), itl: section.slo_itl.get() };
    let capacity = Capacity {
        prefill_tokens_per_s: section.prefill_tokens_per_s,
        decode_tokens_per_s: section.decode_tokens_per_s,
    };
    PlannerConfig {
        hysteresis: section.hysteresis,
        disagg_min_blocks: router.disagg_min_blocks,
        ..PlannerConfig::new(slo, mode, devices, capacity)
    }
}
