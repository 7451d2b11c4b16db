//! The worker role: one actor per device, wrapping an engine thread; gateways submit requests and
//! long-poll their output over the control plane. `disagg` is prefill and decode across workers
//! (`device_route` picks device copies or frames for the blocks); `onboard` the worker's side of the cache tiers (offloading to them, onboarding from them);
//! `spare` a spare device whose worker the planner starts and stops.

pub(crate) mod actor;
mod device_route;
pub mod disagg;
pub mod onboard;
pub mod spare;

pub use actor::{WorkerActor, WorkerArgs};
pub use disagg::Disagg;
pub use spare::{SpareActor, SpareArgs};
