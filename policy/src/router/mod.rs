//! The router's decisions: `index` (which worker holds which KV block, in which tier), `cost`
//! (what placing a prompt somewhere would cost, each term visible), `placer` (the decision, the
//! predicted load, and the KV publications applied), and `disagg` (which prefill worker computes a
//! decode worker's prompt, or why none does).

pub mod cost;
pub mod disagg;
pub mod index;
pub mod placer;

pub use disagg::{DisaggConfig, DisaggOutcome, Eligible, Routed, prefill_key};
pub use placer::{Heard, Placer, PlacerConfig};

use vocab::config::RouterSection;

/// The placer settings of a `[router]` section.
pub fn placer_config(config: &RouterSection) -> PlacerConfig {
    PlacerConfig {
        policy: config.policy,
        cost: cost::CostConfig {
            prefill_weight: config.prefill_weight,
            temperature: config.temperature,
            tier_credit: {
                let mut credit = cost::CostConfig::default().tier_credit;
                credit[index::Tier::Host as usize] = config.tier_credit.host;
                credit[index::Tier::Disk as usize] = config.tier_credit.disk;
                credit[index::Tier::Remote as usize] = config.tier_credit.remote;
                credit
            },
        },
        assumed_ttl: config.assumed_ttl.get(),
    }
}
