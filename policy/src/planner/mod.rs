//! The planner's decisions: `sizing` turns what the last interval saw into pool sizes and a
//! disaggregation threshold, with reasons; `actuation` turns sizes into actions on named workers
//! (which flips, drains, starts or stops, and why); `window` is what the gateway records for it.

pub mod actuation;
pub mod sizing;
pub mod window;

pub use actuation::{Action, Member, MemberState, actuate};
pub use sizing::{Capacity, Decision, Interval, Planner, PlannerConfig, PlannerMode, Pools, Slo};
pub use window::LatencyWindow;

/// The planner core's settings from `[planner]`, with the router's own disaggregation threshold
/// as the one to keep while the prefill pool keeps up.
pub fn config_from(
    section: &vocab::config::PlannerSection,
    router: &vocab::config::RouterSection,
    devices: usize,
) -> PlannerConfig {
    let mode = section.mode;
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
