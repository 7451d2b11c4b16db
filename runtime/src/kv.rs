//! KV-cache events: what a block pool (or a cache tier) tells routers about the blocks it holds.

use serde::{Deserialize, Serialize};

/// A change to the set of blocks a pool holds, by sequence hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEvent {
    /// Blocks became findable; `parent` is the sequence hash of the block before the first one.
    Stored { parent: Option<u64>, hashes: Vec<u64> },
    /// Blocks were evicted.
    Removed { hashes: Vec<u64> },
    /// Everything was dropped (a pool reset).
    Cleared,
}

/// An event with its per-pool id. Ids increase by one, so a gap tells a listener it missed
/// something and must ask for a dump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEventRecord {
    pub id: u64,
    pub event: KvEvent,
}

/// The full state of a pool, for a listener that lost track: every registered block as
/// (parent, hash), and the id of the last event it reflects.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KvDump {
    pub last_event_id: u64,
    pub blocks: Vec<(Option<u64>, u64)>,
}
