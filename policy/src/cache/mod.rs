//! The cache tiers' decisions: `store` is one tier's bookkeeping (what it holds, its budget, LRU
//! eviction within priority, the KV events it publishes), `onboard` the cost test for reading a
//! prompt's blocks from a tier instead of computing them.

pub mod onboard;
pub mod store;

pub use onboard::{onboard_pays, transfer_time};
pub use store::{Evicted, TierStats, TierStore};
