//! The planner: sizes the prefill and decode pools from load and SLOs. `policy` is its sans-IO
//! core (what the last interval saw in, pool sizes and reasons out); the actor that runs it on a
//! cluster and the simulator's use of it build on that core.

pub mod actor;
pub mod policy;
pub mod window;

pub use actor::{PlannerActor, PlannerArgs, PlannerMsg};
pub use policy::{Capacity, Decision, Interval, Planner, PlannerConfig, PlannerMode, Pools, Slo};
pub use window::LatencyWindow;

/// The planner core's settings from `[planner]`.
pub fn config_from(section: &runtime::config::PlannerSection, devices: usize) -> PlannerConfig {
    let mode = if section.mode == "throughput" { PlannerMode::Throughput } else { PlannerMode::Load };
    let slo = Slo { ttft: section.slo_ttft.get(), itl: section.slo_itl.get() };
    let capacity = Capacity {
        prefill_tokens_per_s: section.prefill_tokens_per_s,
        decode_tokens_per_s: section.decode_tokens_per_s,
    };
    PlannerConfig { hysteresis: section.hysteresis, ..PlannerConfig::new(slo, mode, devices, capacity) }
}
