//! Discrete-event simulation of a cluster over the real router, scheduler and block-pool cores,
//! with a timing model in place of the forward pass, trace readers and seeded fault plans.
//!
//! Empty for now: the simulator arrives with the KV-aware router (issue 4). It is in the
//! workspace now so the crate map of DESIGN.md holds from the start.
