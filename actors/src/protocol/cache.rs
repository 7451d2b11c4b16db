//! The cache tiers' protocol: `TierMsg` (what workers, routers and other nodes send a host or
//! disk tier) and the blocks it moves.

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use runtime::kv::{BlockLayout, KvSnapshot, TierSendRequest, TierSent};
use serde::{Deserialize, Serialize};

/// One block moving into or out of a tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierBlock {
    pub hash: u64,
    pub parent: Option<u64>,
    /// Times it was served from the tier it comes from (what the disk tier's priority is).
    pub reuses: u32,
    pub data: Vec<u8>,
}

/// Blocks offloaded into a tier, all of model `model` laid out as `layout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierBlocks {
    pub model: u64,
    pub layout: BlockLayout,
    pub blocks: Vec<TierBlock>,
}

/// Read the leading blocks of `hashes` that the tier holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRead {
    pub hashes: Vec<u64>,
    pub model: u64,
    pub layout: BlockLayout,
}

runtime::wire_message!(TierBlocks, TierRead);

#[derive(RactorClusterMessage)]
pub enum TierMsg {
    /// Blocks a worker on this node copied out of its pool (or the host tier evicted).
    Offload(TierBlocks),
    /// The leading blocks of a prompt, for a worker on this node (stops at the first block the
    /// tier lacks or finds corrupt).
    #[rpc]
    Read(TierRead, RpcReplyPort<TierBlocks>),
    /// The leading blocks of a prompt, sent over the data plane to a worker on another node.
    #[rpc]
    Send(TierSendRequest, RpcReplyPort<TierSent>),
    /// Everything the tier holds, for a router that lost track of its events.
    #[rpc]
    KvDump(RpcReplyPort<KvSnapshot>),
    /// Local timer: publish new KV events (or a heartbeat).
    Publish,
}
