//! The cluster runtime and the shared vocabulary: config, ids, request and stream types, node
//! bootstrap on ractor_cluster, supervision, discovery, leases and telemetry.

pub mod blocks;
pub mod buffers;
pub mod config;
pub mod discovery;
pub mod ids;
pub mod kv;
pub mod launch;
pub mod lease;
pub mod node;
pub mod request;
pub mod supervision;
pub mod telemetry;
pub mod wire;

pub use config::{ClusterConfig, ConfigError};
pub use ids::{RequestId, WorkerId};
