//! The multi-tier KV cache: a node's host-RAM and disk tiers as actors (`actor`), their
//! bookkeeping as plain structs (`store`, `disk`), and the worker's side: onboarding a prompt's
//! blocks from a tier when moving them is cheaper than computing them (`onboard`).

pub mod actor;
pub mod disk;
pub mod onboard;
pub mod store;

pub use actor::{CacheTierActor, TierArgs, TierBlock, TierBlocks, TierMsg, TierRead};
pub use store::{TierStats, TierStore};
