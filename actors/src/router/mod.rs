//! The router role: picks a worker for each request (round-robin or least-loaded, with load it
//! predicts itself) among the live workers that discovery shows.

mod actor;
mod placer;

pub use actor::{Placement, RouterActor, RouterArgs, RouterMsg, RouterStatus};
pub use placer::Placer;
