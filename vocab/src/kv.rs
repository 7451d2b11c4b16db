//! KV-cache events: what a block pool (or a cache tier) tells routers about the blocks it holds.

use serde::{Deserialize, Serialize};

use crate::ids::WorkerId;

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

/// How one KV block is laid out in memory, as a worker exports it: for each layer, K then V, each
/// `block_size × kv_width` values of `dtype_bytes` bytes (the executor's own order within them).
/// Two workers can exchange blocks only when their layouts (and models) are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockLayout {
    pub layers: u32,
    pub block_size: u32,
    /// KV heads × head size.
    pub kv_width: u32,
    pub dtype_bytes: u32,
}

impl BlockLayout {
    /// Bytes of one block, K and V of every layer.
    pub fn block_bytes(&self) -> usize {
        2 * self.layers as usize * self.block_size as usize * self.kv_width as usize * self.dtype_bytes as usize
    }
}

/// What a worker publishes to every router: new events, or, when it has none, a heartbeat with
/// the id of its last event (so a listener that lost the last events notices).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvBatch {
    Events(Vec<KvEventRecord>),
    Heartbeat { last_event_id: u64 },
}

/// Where published blocks live: a worker's device pool or one of a node's cache tiers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    #[default]
    Device,
    Host,
    Disk,
}

impl TierKind {
    pub fn name(self) -> &'static str {
        match self {
            TierKind::Device => "device",
            TierKind::Host => "host",
            TierKind::Disk => "disk",
        }
    }

    /// The id a node's tier publishes under: `node/host`, `node/disk`.
    pub fn source(self, node: &str) -> WorkerId {
        WorkerId::new(node, self.name())
    }
}

/// One publication of a worker's pool (or of a cache tier) to the routers (the `kv-listeners`
/// process group).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPublish {
    /// The worker; for a cache tier, `node/host` or `node/disk` (`TierKind::source`).
    pub worker: WorkerId,
    #[serde(default)]
    pub tier: TierKind,
    /// Chosen at random each time the worker starts: a new one means a fresh pool, whose event
    /// ids start again from 1.
    pub incarnation: u64,
    /// When it was sent (Unix milliseconds), for the routers' event-lag metric.
    pub sent_unix_ms: u64,
    pub batch: KvBatch,
    /// How full the worker is (device workers; the planner reads it from the routers).
    #[serde(default)]
    pub load: Option<WorkerLoad>,
}

/// How full a worker is: its KV pool (blocks held by running sequences, of all) and its queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLoad {
    pub kv_active: u32,
    pub kv_total: u32,
    pub running: u32,
    pub waiting: u32,
}

impl WorkerLoad {
    /// The share of the KV pool in use, 0 to 1.
    pub fn kv_use(&self) -> f64 {
        f64::from(self.kv_active) / f64::from(self.kv_total.max(1))
    }
}

/// A worker's answer to a router that asked for its pool's full state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSnapshot {
    pub incarnation: u64,
    pub dump: KvDump,
}

/// The router found more of a prompt in a cache tier than on the chosen worker: the worker may
/// onboard the prompt's first `blocks` blocks from it instead of computing them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnboardHint {
    /// The tier (`TierKind::source`: `node/host`, `node/disk`).
    pub source: WorkerId,
    pub kind: TierKind,
    pub blocks: u32,
}

/// A worker asks a cache tier on another node to send blocks over the data plane, as transfer
/// `transfer` to the node `to_node` at `to_addr`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSendRequest {
    pub hashes: Vec<u64>,
    pub transfer: u64,
    pub to_node: String,
    pub to_addr: String,
    pub model: u64,
    pub layout: BlockLayout,
}

/// How many leading blocks of the request a tier sent (it stops at the first it lacks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSent {
    pub blocks: u32,
}

#[cfg(feature = "wire")]
crate::wire_message!(KvPublish, KvDump, KvSnapshot, TierSendRequest, TierSent);

/// Now, in Unix milliseconds (`KvPublish::sent_unix_ms`); 0 if the clock is before 1970.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(all(test, feature = "wire"))]
mod tests {
    use ractor::BytesConvertable;

    use super::*;

    #[test]
    fn publications_round_trip() {
        let p = KvPublish {
            worker: WorkerId::new("n1", "cpu"),
            tier: TierKind::Host,
            incarnation: u64::MAX - 3,
            sent_unix_ms: 1_790_000_000_000,
            batch: KvBatch::Events(vec![
                KvEventRecord { id: 1, event: KvEvent::Stored { parent: None, hashes: vec![u64::MAX, 7] } },
                KvEventRecord { id: 2, event: KvEvent::Removed { hashes: vec![7] } },
            ]),
            load: Some(WorkerLoad { kv_active: 3, kv_total: 40, running: 2, waiting: 5 }),
        };
        assert_eq!(KvPublish::from_bytes(p.clone().into_bytes()), p);
        let d = KvDump { last_event_id: 9, blocks: vec![(None, 1), (Some(1), u64::MAX)] };
        assert_eq!(KvDump::from_bytes(d.clone().into_bytes()), d);
    }
}
