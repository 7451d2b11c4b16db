//! What the roles share to talk to each other, so that no role folder imports another's internals
//! in a circle: the KV publication protocol (`kv`) and the node's shared state and names (`node`).
//! The request-path message enums (`RouterMsg`, `WorkerMsg`, `TierMsg`) still live beside their
//! actors; each is imported in one direction only (gateway → router → worker → cache).

pub mod kv;
pub mod node;

pub use kv::{KV_PUBLISH_INTERVAL, KvListenerMsg, KvPublisher, publish};
pub use node::{InflightGuard, NodeState, ROUTER_NAME};
