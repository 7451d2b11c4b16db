//! Discrete-event simulation of a cluster over the real router, scheduler and block-pool cores,
//! with a timing model in place of the forward pass: trace readers (`trace`), bounds that do not
//! depend on routing (`bounds`), the event loop (`cluster`), and the report (`report`).

pub mod bounds;
pub mod cluster;
pub mod faults;
pub mod pools;
pub mod queue;
pub mod report;
pub mod simulate;
pub mod trace;
