//! Armature's decision cores, sans-IO. Each takes `now` (a `Duration` since an epoch its caller
//! chooses) and, where it draws, a seeded RNG, and returns what to do; the actors in `actors`
//! carry that out, and the simulator in `simulations` drives the very same types in virtual time.
//!
//! - `router`: the KV index, the routing cost, the placer and disaggregated placement.
//! - `planner`: the pool sizing and its actuation (which worker flips, drains, starts or stops).
//! - `cache`: a cache tier's bookkeeping and the onboarding cost.
//! - `lifecycle`: one request's life from placement to its end: retries, migrations, cancels.
//! - `limits`: per-key rate limits (token buckets over requests and tokens per second).
//!
//! Architecture invariant: this crate knows nothing of tokio, ractor, sockets or the wall clock.

pub mod cache;
pub mod lifecycle;
pub mod limits;
pub mod planner;
pub mod router;
