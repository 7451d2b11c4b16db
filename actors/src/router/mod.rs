//! The router role: picks a worker for each request (round-robin or least-loaded, with load it
//! predicts itself) among the live workers that discovery shows. `index` and `cost` are the
//! sans-IO core of KV-aware placement (which worker holds which blocks; what placing a prompt
//! there would cost).

mod actor;
pub mod cost;
pub mod index;
mod placer;

pub use actor::{Placement, RouterActor, RouterArgs, RouterMsg, RouterStatus};
pub use placer::Placer;
