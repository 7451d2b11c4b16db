//! The router role: picks a worker for each request. `index` (which worker holds which KV block,
//! in which tier), `cost` (what placing a prompt somewhere would cost) and `placer` (decisions and
//! predicted load) are the sans-IO core, shared with the simulator; `actor` and `listener` are
//! the thin actors that feed it the workers' KV events and serve gateways.

mod actor;
pub mod cost;
pub mod index;
mod listener;
pub mod placer;

pub use actor::{
    ExplainedDecision, Placement, RouterActor, RouterArgs, RouterMsg, RouterStatus, WorkerView, placer_config,
};
pub use listener::{KvListener, KvListenerMsg, KvPublisher, publish};
pub use placer::{Heard, Placer, PlacerConfig};
