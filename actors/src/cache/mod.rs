//! The multi-tier KV cache: a node's host-RAM and disk tiers as actors (`actor`) around their
//! bookkeeping (`policy::cache::TierStore`), the disk tier's files (`disk`), and the worker's
//! side: onboarding a prompt's blocks from a tier when `policy::cache::onboard_pays` says moving
//! them is cheaper than computing them (`onboard`).

pub mod actor;
pub mod disk;
pub mod onboard;

pub use actor::{CacheTierActor, TierArgs, TierBlock, TierBlocks, TierMsg, TierRead};
