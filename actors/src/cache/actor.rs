//! `CacheTierActor`: one of a node's cache tiers (host RAM or disk). Workers on the node offload
//! blocks into it and read blocks back from it; workers on other nodes have blocks sent to them
//! over the data plane. It publishes its contents to the routers as KV events tagged with its
//! tier, like a worker's pool. The host tier hands the blocks it evicts to the disk tier once they
//! were reused often enough (`cache.disk_after_reuses`), to spare the disk.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use runtime::buffers::{Buffer, BufferPool};
use runtime::discovery;
use runtime::kv::{BlockLayout, KvSnapshot, TierKind, TierSendRequest, TierSent};
use transport::frame::{Frame, FrameHeader};
use transport::{DataPlane, PeerAddr};

use super::disk::{DiskStore, ReadError};
use crate::protocol::{KvPublisher, TierBlock, TierBlocks, TierMsg};
use policy::cache::{Evicted, TierStore};

pub struct TierArgs {
    pub node: String,
    pub kind: TierKind,
    /// Host: the RAM budget. Disk: the directory's budget.
    pub budget: u64,
    /// Disk: the directory.
    pub dir: Option<std::path::PathBuf>,
    /// Host: evicted blocks reused at least this many times move to the node's disk tier.
    pub disk_after_reuses: u32,
    /// For sending blocks to workers on other nodes.
    pub plane: Option<Arc<DataPlane>>,
}

/// Where a tier keeps its bytes.
enum Blocks {
    Host { data: HashMap<u64, Buffer>, buffers: BufferPool, store: TierStore },
    Disk(DiskStore),
}

pub struct TierState {
    kind: TierKind,
    blocks: Blocks,
    /// The model and layout of the blocks held (the first offload sets them).
    model: Option<(u64, BlockLayout)>,
    disk_after_reuses: u32,
    plane: Option<Arc<DataPlane>>,
    node: String,
    publisher: KvPublisher,
    corrupt: u64,
}

pub struct CacheTierActor;

impl Actor for CacheTierActor {
    type Msg = TierMsg;
    type State = TierState;
    type Arguments = TierArgs;

    async fn pre_start(&self, myself: ActorRef<TierMsg>, args: TierArgs) -> Result<TierState, ActorProcessingErr> {
        let blocks = match args.kind {
            TierKind::Disk => {
                let dir = args.dir.ok_or("a disk tier needs a directory")?;
                let (disk, rebuilt) = DiskStore::open(&dir, args.budget)
                    .map_err(|e| format!("disk tier {}: cannot open: {e}", dir.display()))?;
                tracing::info!(node = %args.node, dir = %dir.display(), blocks = rebuilt.blocks, dropped = rebuilt.dropped, "disk tier rebuilt its index");
                Blocks::Disk(disk)
            }
            _ => Blocks::Host { data: HashMap::new(), buffers: BufferPool::new(4), store: TierStore::new(args.budget) },
        };
        discovery::join_tier(&args.node, args.kind, myself.get_cell());
        runtime::catalogue::register_zeros_for(runtime::catalogue::TIER_FAMILIES, "tier", args.kind.name());
        // Ends with the actor (ractor stops an interval whose actor is gone).
        myself.send_interval(crate::protocol::KV_PUBLISH_INTERVAL, || TierMsg::Publish);
        let state = TierState {
            kind: args.kind,
            blocks,
            model: None,
            disk_after_reuses: args.disk_after_reuses,
            plane: args.plane,
            publisher: KvPublisher::new(args.kind.source(&args.node), args.kind),
            node: args.node,
            corrupt: 0,
        };
        state.record();
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<TierMsg>,
        msg: TierMsg,
        state: &mut TierState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TierMsg::Offload(batch) => state.offload(batch),
            TierMsg::Read(read, reply) => {
                let blocks = state.read(&read.hashes, read.model, read.layout);
                let _ = reply.send(TierBlocks { model: read.model, layout: read.layout, blocks });
            }
            TierMsg::Send(request, reply) => {
                let blocks = state.read(&request.hashes, request.model, request.layout);
                match state.plane.clone() {
                    Some(plane) => {
                        tokio::spawn(send(plane, request, blocks, reply));
                    }
                    None => {
                        tracing::warn!(node = %state.node, "a worker asked for blocks over the data plane, but this node has none");
                        let _ = reply.send(TierSent { blocks: 0 });
                    }
                }
            }
            TierMsg::KvDump(reply) => {
                let _ =
                    reply.send(KvSnapshot { incarnation: state.publisher.incarnation(), dump: state.store().dump() });
            }
            TierMsg::Publish => {
                let events = state.store_mut().take_events();
                state.publisher.publish(events, None);
            }
        }
        state.record();
        Ok(())
    }
}

/// Send the blocks read for a worker on another node, one frame each, then say how many.
async fn send(plane: Arc<DataPlane>, r: TierSendRequest, blocks: Vec<TierBlock>, reply: RpcReplyPort<TierSent>) {
    let peer = match r.to_addr.parse() {
        Ok(addr) => PeerAddr { node: r.to_node.clone(), addr },
        Err(e) => {
            tracing::warn!("tier send: bad data-plane address {:?}: {e}", r.to_addr);
            let _ = reply.send(TierSent { blocks: 0 });
            return;
        }
    };
    let n = blocks.len();
    let mut sent = 0u32;
    for (i, b) in blocks.into_iter().enumerate() {
        let header = FrameHeader::for_body(r.transfer, r.model, r.layout, i as u32, vec![b.hash], i + 1 == n, &b.data);
        let body = plane.pool().copy_of(&b.data);
        if let Err(e) = plane.send(&peer, Frame { header, body }).await {
            tracing::warn!(to = %r.to_node, "tier send failed after {sent} blocks: {e}");
            break;
        }
        sent += 1;
    }
    let _ = reply.send(TierSent { blocks: sent });
}

impl TierState {
    fn store(&self) -> &TierStore {
        match &self.blocks {
            Blocks::Host { store, .. } => store,
            Blocks::Disk(d) => d.store(),
        }
    }

    fn store_mut(&mut self) -> &mut TierStore {
        match &mut self.blocks {
            Blocks::Host { store, .. } => store,
            Blocks::Disk(d) => d.store_mut(),
        }
    }

    fn offload(&mut self, batch: TierBlocks) {
        let (model, layout) = *self.model.get_or_insert((batch.model, batch.layout));
        if (batch.model, batch.layout) != (model, layout) || batch.layout.block_bytes() == 0 {
            metrics::counter!("armature_cache_refused_total", "tier" => self.kind.name())
                .increment(batch.blocks.len() as u64);
            return;
        }
        let mut demote = Vec::new();
        for b in batch.blocks {
            if b.data.len() != layout.block_bytes() {
                metrics::counter!("armature_cache_refused_total", "tier" => self.kind.name()).increment(1);
                continue;
            }
            let evicted = match &mut self.blocks {
                Blocks::Host { data, buffers, store } => match store.insert(b.hash, b.parent, b.data.len() as u64, 0) {
                    Ok(evicted) => {
                        let buf = buffers.copy_of(&b.data);
                        data.insert(b.hash, buf);
                        evicted.into_iter().filter_map(|e| data.remove(&e.hash).map(|d| (e, d))).collect()
                    }
                    Err(_) => Vec::new(),
                },
                Blocks::Disk(disk) => {
                    let priority = b.reuses.min(u32::from(u8::MAX)) as u8;
                    if let Err(e) = disk.put(b.hash, b.parent, model, layout, &b.data, priority) {
                        tracing::warn!(node = %self.node, "disk tier: cannot write block {:016x}: {e}", b.hash);
                        metrics::counter!("armature_cache_write_errors_total", "tier" => "disk").increment(1);
                    }
                    Vec::new()
                }
            };
            for (e, data) in evicted {
                let Evicted { hash, parent, reuses, .. } = e;
                if reuses >= self.disk_after_reuses {
                    demote.push(TierBlock { hash, parent, reuses, data: data.to_vec() });
                }
            }
        }
        let lower = (self.kind == TierKind::Host)
            .then(|| discovery::tier(&TierKind::Disk.source(&self.node)))
            .flatten()
            .map(ActorRef::<TierMsg>::from);
        if let (Some(lower), false) = (lower, demote.is_empty()) {
            metrics::counter!("armature_cache_demoted_blocks_total").increment(demote.len() as u64);
            let _ = lower.cast(TierMsg::Offload(TierBlocks { model, layout, blocks: demote }));
        }
    }

    /// The leading blocks of `hashes` this tier holds and can serve.
    fn read(&mut self, hashes: &[u64], model: u64, layout: BlockLayout) -> Vec<TierBlock> {
        if self.model.is_some_and(|m| m != (model, layout)) {
            return Vec::new();
        }
        let n = self.store_mut().lookup(hashes);
        let mut out = Vec::with_capacity(n);
        for &hash in &hashes[..n] {
            let block = match &mut self.blocks {
                Blocks::Host { data, store, .. } => {
                    store.serve(hash);
                    let reuses = store.reuses(hash).unwrap_or(0);
                    data.get(&hash).map(|d| TierBlock { hash, parent: None, reuses, data: d.to_vec() })
                }
                Blocks::Disk(disk) => match disk.get(hash, model, layout) {
                    Ok(data) => {
                        Some(TierBlock { hash, parent: None, reuses: disk.store().reuses(hash).unwrap_or(0), data })
                    }
                    Err(ReadError::Missing(_)) => None,
                    Err(e @ ReadError::Corrupt { .. }) => {
                        tracing::warn!(node = %self.node, "disk tier: {e}");
                        self.corrupt += 1;
                        None
                    }
                },
            };
            match block {
                Some(b) => out.push(b),
                None => break,
            }
        }
        out
    }

    /// Export the tier's counters and occupancy as metrics.
    fn record(&self) {
        let tier = self.kind.name();
        let s = self.store().stats();
        metrics::counter!("armature_cache_lookup_blocks_total", "tier" => tier).absolute(s.lookups);
        metrics::counter!("armature_cache_hit_blocks_total", "tier" => tier).absolute(s.hits);
        metrics::counter!("armature_cache_bytes_in_total", "tier" => tier).absolute(s.bytes_in);
        metrics::counter!("armature_cache_bytes_out_total", "tier" => tier).absolute(s.bytes_out);
        metrics::counter!("armature_cache_evictions_total", "tier" => tier).absolute(s.evictions);
        metrics::counter!("armature_cache_corrupt_blocks_total", "tier" => tier).absolute(self.corrupt);
        metrics::gauge!("armature_cache_occupancy_bytes", "tier" => tier).set(self.store().used() as f64);
        metrics::gauge!("armature_cache_budget_bytes", "tier" => tier).set(self.store().budget() as f64);
        metrics::gauge!("armature_cache_blocks", "tier" => tier).set(self.store().len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use ractor::call_t;

    use super::*;
    use crate::protocol::TierRead;

    const LAYOUT: BlockLayout = BlockLayout { layers: 1, block_size: 2, kv_width: 4, dtype_bytes: 2 };

    fn blocks(hashes: &[u64]) -> TierBlocks {
        let blocks = hashes
            .iter()
            .map(|&hash| TierBlock { hash, parent: None, reuses: 0, data: vec![hash as u8; LAYOUT.block_bytes()] })
            .collect();
        TierBlocks { model: 7, layout: LAYOUT, blocks }
    }

    async fn read(tier: &ActorRef<TierMsg>, hashes: &[u64]) -> Vec<u64> {
        let r = TierRead { hashes: hashes.to_vec(), model: 7, layout: LAYOUT };
        let got = call_t!(tier, TierMsg::Read, 5_000, r).unwrap();
        assert!(got.blocks.iter().all(|b| b.data == vec![b.hash as u8; LAYOUT.block_bytes()]));
        got.blocks.iter().map(|b| b.hash).collect()
    }

    #[tokio::test]
    async fn host_tier_moves_only_reused_blocks_to_disk() {
        let node = format!("tier-test-{:08x}", rand::random::<u32>());
        let dir = std::env::temp_dir().join(&node);
        let args = |kind, budget| TierArgs {
            node: node.clone(),
            kind,
            budget,
            dir: Some(dir.clone()),
            disk_after_reuses: 2,
            plane: None,
        };
        let (disk, _) = Actor::spawn(None, CacheTierActor, args(TierKind::Disk, 1 << 20)).await.unwrap();
        // Room for three blocks.
        let (host, _) =
            Actor::spawn(None, CacheTierActor, args(TierKind::Host, 3 * LAYOUT.block_bytes() as u64)).await.unwrap();
        host.cast(TierMsg::Offload(blocks(&[1, 2, 3]))).unwrap();
        assert_eq!(read(&host, &[1, 2, 3, 4]).await, vec![1, 2, 3], "leading blocks, up to the first missing");
        assert_eq!(read(&host, &[1, 2]).await, vec![1, 2]);
        // Three more evict 1, 2 and 3: 1 and 2 were served twice, 3 once.
        host.cast(TierMsg::Offload(blocks(&[4, 5, 6]))).unwrap();
        assert_eq!(read(&host, &[1]).await, Vec::<u64>::new());
        assert_eq!(read(&disk, &[1, 2]).await, vec![1, 2]);
        assert_eq!(read(&disk, &[3]).await, Vec::<u64>::new(), "used once: not worth the disk");
        // Blocks of another model or layout are refused.
        let mut other = blocks(&[9]);
        other.model = 8;
        host.cast(TierMsg::Offload(other)).unwrap();
        assert_eq!(read(&host, &[4, 5, 6]).await, vec![4, 5, 6]);
        let r = TierRead { hashes: vec![9], model: 8, layout: LAYOUT };
        assert!(call_t!(host, TierMsg::Read, 5_000, r).unwrap().blocks.is_empty());
        let dump = call_t!(host, TierMsg::KvDump, 5_000).unwrap().dump;
        assert_eq!(dump.blocks.iter().map(|b| b.1).collect::<Vec<_>>(), vec![4, 5, 6]);
        host.stop(None);
        disk.stop(None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
