//! The cluster runtime: node bootstrap on ractor_cluster, supervision, discovery, leases and
//! telemetry, with the shared vocabulary (`vocab`: config, ids, request and stream types)
//! re-exported.

pub mod buffers;
pub mod catalogue;
pub mod discovery;
pub mod launch;
pub mod lease;
pub mod node;
pub mod scrape;
pub mod supervision;
pub mod telemetry;
pub mod trace;

// The shared vocabulary lives in `vocab` (no runtime, so the decision cores and the simulator can
// use it); it is re-exported here so the runtime's users name one crate.
pub use vocab::{blocks, config, ids, kv, request, wire, wire_message};

pub use config::{ClusterConfig, ConfigError};
pub use ids::{RequestId, WorkerId};
