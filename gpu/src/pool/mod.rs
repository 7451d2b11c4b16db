//! The paged KV block pool: fixed-size, reference-counted blocks with prefix caching keyed by the
//! chained sequence hash, LRU eviction of inactive blocks, and KV events. It manages block ids;
//! the executor owns the memory behind them, allocated once for `total` blocks.
//!
//! Lifecycle: free → in use (filling) → registered (complete, findable by hash) → inactive
//! (refcount 0, evictable, least recently used first) → evicted back to free. Registering emits
//! `Stored`, evicting emits `Removed`. Sans-IO: no clock, no threads.

use std::collections::{BTreeMap, HashMap};

use runtime::kv::{KvDump, KvEvent, KvEventRecord};

/// Index of a block in the pool (and in the executor's KV storage).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the KV pool has {available} blocks to give, {wanted} were asked for")]
pub struct PoolExhausted {
    pub wanted: usize,
    pub available: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Block {
    refs: u32,
    /// (parent, hash) once registered.
    hash: Option<(Option<u64>, u64)>,
    /// Position in the LRU while inactive.
    lru: Option<u64>,
}

/// Block counts; `free + active + inactive == total` always holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub total: usize,
    pub free: usize,
    /// Referenced by at least one sequence.
    pub active: usize,
    /// Registered, unreferenced, evictable.
    pub inactive: usize,
    /// Blocks found in the cache by `acquire_prefix` since the start.
    pub prefix_hits: u64,
    pub evictions: u64,
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    free: Vec<BlockId>,
    by_hash: HashMap<u64, BlockId>,
    inactive: BTreeMap<u64, BlockId>,
    tick: u64,
    next_event: u64,
    events: Vec<KvEventRecord>,
    prefix_hits: u64,
    evictions: u64,
    /// Record evicted (write-back) or registered (write-through) blocks for `take_watched`.
    watch: Watch,
    watched: Vec<WatchedBlock>,
}

/// Which blocks the pool records for copying out (to the cache tiers) before their memory is
/// reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Watch {
    #[default]
    Nothing,
    /// Registered blocks, as they are evicted (their memory is about to be reused).
    Evicted,
    /// Blocks as they are registered.
    Registered,
}

/// A block the pool recorded under its `Watch`: its memory still holds its KV until the caller
/// next writes to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedBlock {
    pub id: BlockId,
    pub parent: Option<u64>,
    pub hash: u64,
}

impl BlockPool {
    pub fn new(total: usize) -> Self {
        Self {
            blocks: vec![Block::default(); total],
            // Pop from the end: hand out low ids first.
            free: (0..total as u32).rev().map(BlockId).collect(),
            by_hash: HashMap::new(),
            inactive: BTreeMap::new(),
            tick: 0,
            next_event: 1,
            events: Vec::new(),
            prefix_hits: 0,
            evictions: 0,
            watch: Watch::Nothing,
            watched: Vec::new(),
        }
    }

    pub fn set_watch(&mut self, watch: Watch) {
        self.watch = watch;
    }

    /// Blocks recorded under the watch since the last call.
    pub fn take_watched(&mut self) -> Vec<WatchedBlock> {
        std::mem::take(&mut self.watched)
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that `allocate` can hand out now (free plus evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.inactive.len()
    }

    pub fn stats(&self) -> PoolStats {
        let active = self.blocks.iter().filter(|b| b.refs > 0).count();
        PoolStats {
            total: self.blocks.len(),
            free: self.free.len(),
            active,
            inactive: self.inactive.len(),
            prefix_hits: self.prefix_hits,
            evictions: self.evictions,
        }
    }

    /// How many leading blocks of `seq_hashes` are cached.
    pub fn cached_prefix(&self, seq_hashes: &[u64]) -> usize {
        seq_hashes.iter().take_while(|h| self.by_hash.contains_key(h)).count()
    }

    /// Take a reference on the cached leading blocks of `seq_hashes`; returns them in order.
    pub fn acquire_prefix(&mut self, seq_hashes: &[u64]) -> Vec<BlockId> {
        let n = self.cached_prefix(seq_hashes);
        let ids: Vec<BlockId> = seq_hashes[..n].iter().map(|h| self.by_hash[h]).collect();
        for &id in &ids {
            self.retain(id);
        }
        self.prefix_hits += n as u64;
        ids
    }

    /// Add a reference to a block already held.
    pub fn retain(&mut self, id: BlockId) {
        let b = &mut self.blocks[id.0 as usize];
        if let Some(t) = b.lru.take() {
            self.inactive.remove(&t);
        }
        b.refs += 1;
    }

    /// `n` blank blocks, evicting least recently used inactive ones when the free list runs dry.
    /// All or nothing.
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>, PoolExhausted> {
        if n > self.available() {
            return Err(PoolExhausted { wanted: n, available: self.available() });
        }
        let mut out = Vec::with_capacity(n);
        let mut removed = Vec::new();
        for _ in 0..n {
            let id = match self.free.pop() {
                Some(id) => id,
                None => {
                    let (_, id) = self.inactive.pop_first().expect("available() counted it");
                    let b = &mut self.blocks[id.0 as usize];
                    b.lru = None;
                    if let Some((parent, h)) = b.hash.take() {
                        self.by_hash.remove(&h);
                        removed.push(h);
                        if self.watch == Watch::Evicted {
                            self.watched.push(WatchedBlock { id, parent, hash: h });
                        }
                    }
                    self.evictions += 1;
                    id
                }
            };
            self.blocks[id.0 as usize].refs = 1;
            out.push(id);
        }
        if !removed.is_empty() {
            self.emit(KvEvent::Removed { hashes: removed });
        }
        Ok(out)
    }

    /// A held block is now full: make it findable under `hash`. If another block already holds
    /// that hash (two sequences computed the same prefix), this one stays private and returns
    /// false.
    pub fn register(&mut self, id: BlockId, parent: Option<u64>, hash: u64) -> bool {
        if self.by_hash.contains_key(&hash) || self.blocks[id.0 as usize].hash.is_some() {
            return false;
        }
        self.blocks[id.0 as usize].hash = Some((parent, hash));
        self.by_hash.insert(hash, id);
        if self.watch == Watch::Registered {
            self.watched.push(WatchedBlock { id, parent, hash });
        }
        self.emit(KvEvent::Stored { parent, hashes: vec![hash] });
        true
    }

    /// Drop one reference on each block. Unreferenced registered blocks become inactive, the
    /// first given as the most recently used: a sequence released in order is evicted tail first,
    /// so its prefix stays findable longest (a tail without its head matches nothing).
    /// Unregistered blocks go back to the free list.
    pub fn release(&mut self, ids: &[BlockId]) {
        for &id in ids.iter().rev() {
            let b = &mut self.blocks[id.0 as usize];
            assert!(b.refs > 0, "release of unreferenced block {id:?}");
            b.refs -= 1;
            if b.refs > 0 {
                continue;
            }
            if b.hash.is_some() {
                self.tick += 1;
                b.lru = Some(self.tick);
                self.inactive.insert(self.tick, id);
            } else {
                self.free.push(id);
            }
        }
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<KvEventRecord> {
        std::mem::take(&mut self.events)
    }

    /// Every registered block, for a listener that missed events.
    pub fn dump(&self) -> KvDump {
        let mut blocks: Vec<(Option<u64>, u64)> = self.blocks.iter().filter_map(|b| b.hash).collect();
        blocks.sort_unstable();
        KvDump { last_event_id: self.next_event - 1, blocks }
    }

    fn emit(&mut self, event: KvEvent) {
        self.events.push(KvEventRecord { id: self.next_event, event });
        self.next_event += 1;
    }
}

#[cfg(test)]
mod tests;
