//! The multi-tier KV cache: a node's host-RAM and disk tiers as actors (`actor`) around their
//! bookkeeping (`policy::cache::TierStore`) and the disk tier's files (`disk`). The worker's side
//! (offloading into a tier, onboarding from one) is `worker::onboard`.

pub mod actor;
pub mod disk;

pub use actor::{CacheTierActor, TierArgs};
