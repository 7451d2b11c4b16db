//! The planner on a cluster: the actor that feeds the planner core (`policy::planner`) what the
//! node saw and carries out the actions its actuation returns.

pub mod actor;

pub use actor::{PlannerActor, PlannerArgs, PlannerMsg};
