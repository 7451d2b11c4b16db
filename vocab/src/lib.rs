//! The shared vocabulary every Armature crate speaks: ids, requests and stream events, KV events
//! and dumps, the block-hash scheme, and the typed cluster config. Plain data and pure functions:
//! no runtime, no sockets, no clock. With the `wire` feature the message payloads also implement
//! ractor's `BytesConvertable`, the control plane's encoding.

pub mod blocks;
pub mod config;
pub mod ids;
pub mod kv;
pub mod request;
#[cfg(feature = "wire")]
pub mod wire;

pub use config::{ClusterConfig, ConfigError};
pub use ids::{RequestId, WorkerId};
