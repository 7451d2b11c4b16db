//! Supervision: a restart policy with exponential backoff and escalation (sans-IO), and the
//! `NodeSupervisor` actor that applies it to a node's children.

mod actor;
mod policy;

pub use actor::{ChildSpec, NodeSupervisor, SupervisorArgs, SupervisorExit, SupervisorMsg};
pub use policy::{RestartDecision, RestartPolicy, RestartTracker};
