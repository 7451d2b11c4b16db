//! The router role: picks a worker for each request. Its decisions are `policy::router` (the KV
//! index, the cost, the placer and disaggregated placement), shared with the simulator; `actor`
//! and `listener` are the thin actors that feed it the workers' KV events and serve gateways.

mod actor;
mod listener;

pub use actor::{RouterActor, RouterArgs};
pub use listener::KvListener;
