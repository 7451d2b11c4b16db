//! The worker role: one actor per device, wrapping an engine thread; gateways submit requests and
//! long-poll their output over the control plane.

mod actor;

pub use actor::{WorkerActor, WorkerArgs, WorkerMsg};
