//! The roles as actors: gateway (OpenAI HTTP API), router (placement), worker (one per device),
//! and the assembly of a node's children under its supervisor. Each role keeps its decisions in a
//! plain struct and its actor thin.

pub mod cache;
pub mod gateway;
pub mod node;
pub mod planner;
pub mod protocol;
pub mod router;
pub mod worker;

pub use node::NodePlan;
pub use protocol::NodeState;
