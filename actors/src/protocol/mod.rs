//! What the roles share to talk to each other, so that no role folder imports another's: every
//! message type a role receives from another (`RouterMsg`, `WorkerMsg`, `SpareMsg`, `TierMsg`,
//! `KvListenerMsg`), the typed handles that wrap the calls and the discovery look-ups
//! (`RouterHandle`, `WorkerHandle`), the KV publication protocol (`kv`), and the node's shared
//! state and names (`node`). The actors that receive these live in their role folders.

pub mod cache;
pub mod kv;
pub mod node;
pub mod router;
pub mod worker;

pub use cache::{TierBlock, TierBlocks, TierMsg, TierRead};
pub use kv::{KV_PUBLISH_INTERVAL, KvListenerMsg, KvPublisher, publish};
pub use node::{InflightGuard, NodeState, ROUTER_NAME};
pub use router::{ExplainedDecision, Placement, RouterHandle, RouterMsg, RouterStatus, WorkerView};
pub use worker::{CallResult, SpareMsg, WorkerHandle, WorkerMsg};
