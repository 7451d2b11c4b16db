//! Moving KV blocks between workers and cache tiers: the versioned rkyv frame format, the QUIC data
//! plane, same-host shared memory, in-process hand-off and CUDA peer copies.
//!
//! Nothing moves KV blocks yet: this crate fills in with disaggregated prefill and decode
//! (issue 5). It is in the workspace now so the crate map of DESIGN.md holds and dependencies
//! point one way from the start.
