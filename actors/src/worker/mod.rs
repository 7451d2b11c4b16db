//! The worker role: one actor per device, wrapping an engine thread; gateways submit requests and
//! long-poll their output over the control plane. `disagg` is prefill and decode across workers.

pub(crate) mod actor;
pub mod disagg;

pub use actor::{WorkerActor, WorkerArgs, WorkerMsg};
pub use disagg::Disagg;
