//! `TierStore`: the bookkeeping of one cache tier (host RAM or disk) as a plain struct: which
//! blocks it holds and their sizes, a byte budget it never exceeds, eviction least recently used
//! within priority (lower priorities go first), how often each block was reused, and the KV
//! events and dumps the routers need. It holds no bytes itself: the host and disk tiers keep
//! those beside it, and the simulator keeps none.

use std::collections::{BTreeMap, HashMap};

use vocab::kv::{KvDump, KvEvent, KvEventRecord};

/// A block larger than the whole budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a block of {bytes} bytes does not fit a tier of {budget} bytes")]
pub struct TooLarge {
    pub bytes: u64,
    pub budget: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    parent: Option<u64>,
    bytes: u64,
    priority: u8,
    reuses: u32,
    /// Position in `order`.
    tick: u64,
}

/// A block the store let go of to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evicted {
    pub hash: u64,
    pub parent: Option<u64>,
    pub bytes: u64,
    /// Times it was served while here.
    pub reuses: u32,
}

/// Counters since the store was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Blocks asked for by `lookup` and found by it.
    pub lookups: u64,
    pub hits: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub evictions: u64,
    /// Blocks refused because they exceed the budget on their own.
    pub refused: u64,
}

#[derive(Debug)]
pub struct TierStore {
    budget: u64,
    used: u64,
    entries: HashMap<u64, Entry>,
    /// (priority, tick) → hash: the first entry is the next to evict.
    order: BTreeMap<(u8, u64), u64>,
    tick: u64,
    next_event: u64,
    events: Vec<KvEventRecord>,
    stats: TierStats,
}

impl TierStore {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            used: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            next_event: 1,
            events: Vec::new(),
            stats: TierStats::default(),
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes held; never above the budget.
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> TierStats {
        self.stats
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.entries.contains_key(&hash)
    }

    /// Keep a block of `bytes` under `hash`, evicting what it takes to stay within the budget.
    /// A block already held is only refreshed. Returns what was evicted, oldest first.
    pub fn insert(
        &mut self,
        hash: u64,
        parent: Option<u64>,
        bytes: u64,
        priority: u8,
    ) -> Result<Vec<Evicted>, TooLarge> {
        if self.entries.contains_key(&hash) {
            self.touch(hash);
            return Ok(Vec::new());
        }
        if bytes > self.budget {
            self.stats.refused += 1;
            return Err(TooLarge { bytes, budget: self.budget });
        }
        let mut evicted = Vec::new();
        while self.used + bytes > self.budget {
            let (_, victim) = self.order.pop_first().expect("used > 0 means something is held");
            let e = self.entries.remove(&victim).expect("ordered entries exist");
            self.used -= e.bytes;
            self.stats.evictions += 1;
            evicted.push(Evicted { hash: victim, parent: e.parent, bytes: e.bytes, reuses: e.reuses });
        }
        if !evicted.is_empty() {
            self.emit(KvEvent::Removed { hashes: evicted.iter().map(|e| e.hash).collect() });
        }
        self.tick += 1;
        self.entries.insert(hash, Entry { parent, bytes, priority, reuses: 0, tick: self.tick });
        self.order.insert((priority, self.tick), hash);
        self.used += bytes;
        self.stats.bytes_in += bytes;
        self.emit(KvEvent::Stored { parent, hashes: vec![hash] });
        Ok(evicted)
    }

    /// How many leading blocks of `hashes` are held, counting each asked block as a lookup and
    /// each found one as a hit (the tier's hit ratio).
    pub fn lookup(&mut self, hashes: &[u64]) -> usize {
        let n = self.prefix(hashes);
        self.stats.lookups += hashes.len() as u64;
        self.stats.hits += n as u64;
        n
    }

    /// Leading blocks of `hashes` held, without counting.
    pub fn prefix(&self, hashes: &[u64]) -> usize {
        hashes.iter().take_while(|h| self.entries.contains_key(h)).count()
    }

    /// A block is being served: count the reuse and make it the most recently used. Its size, or
    /// None if it is not held.
    pub fn serve(&mut self, hash: u64) -> Option<u64> {
        let e = self.entries.get_mut(&hash)?;
        e.reuses = e.reuses.saturating_add(1);
        let bytes = e.bytes;
        self.stats.bytes_out += bytes;
        self.touch(hash);
        Some(bytes)
    }

    /// Times a held block was served.
    pub fn reuses(&self, hash: u64) -> Option<u32> {
        self.entries.get(&hash).map(|e| e.reuses)
    }

    /// Drop a block (found corrupt, say). Whether it was held.
    pub fn remove(&mut self, hash: u64) -> bool {
        let Some(e) = self.entries.remove(&hash) else { return false };
        self.order.remove(&(e.priority, e.tick));
        self.used -= e.bytes;
        self.emit(KvEvent::Removed { hashes: vec![hash] });
        true
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<KvEventRecord> {
        std::mem::take(&mut self.events)
    }

    /// Every block held, for a router that lost track.
    pub fn dump(&self) -> KvDump {
        let mut blocks: Vec<(Option<u64>, u64)> = self.entries.iter().map(|(&h, e)| (e.parent, h)).collect();
        blocks.sort_unstable();
        KvDump { last_event_id: self.next_event - 1, blocks }
    }

    fn touch(&mut self, hash: u64) {
        let Some(e) = self.entries.get_mut(&hash) else { return };
        self.order.remove(&(e.priority, e.tick));
        self.tick += 1;
        e.tick = self.tick;
        self.order.insert((e.priority, self.tick), hash);
    }

    fn emit(&mut self, event: KvEvent) {
        self.events.push(KvEventRecord { id: self.next_event, event });
        self.next_event += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn evicts_least_recently_used_within_priority() {
        let mut s = TierStore::new(300);
        s.insert(1, None, 100, 1).unwrap();
        s.insert(2, Some(1), 100, 0).unwrap();
        s.insert(3, Some(2), 100, 0).unwrap();
        // 2 was used last among priority 0: 3 goes first, then 2; 1 (priority 1) outlives both.
        assert_eq!(s.serve(2), Some(100));
        let out = s.insert(4, None, 100, 0).unwrap();
        assert_eq!(out, vec![Evicted { hash: 3, parent: Some(2), bytes: 100, reuses: 0 }]);
        let out = s.insert(5, None, 200, 0).unwrap();
        assert_eq!(out.iter().map(|e| (e.hash, e.reuses)).collect::<Vec<_>>(), vec![(2, 1), (4, 0)]);
        assert!(s.contains(1) && s.contains(5));
        assert_eq!(s.used(), 300);
        assert_eq!(s.insert(6, None, 301, 0), Err(TooLarge { bytes: 301, budget: 300 }));
        assert_eq!(s.stats().evictions, 3);
        assert_eq!(s.stats().refused, 1);
    }

    #[test]
    fn lookups_count_hits_and_events_describe_the_contents() {
        let mut s = TierStore::new(1000);
        for h in [10, 11, 12] {
            s.insert(h, None, 10, 0).unwrap();
        }
        assert_eq!(s.lookup(&[10, 11, 99, 12]), 2);
        assert_eq!((s.stats().lookups, s.stats().hits), (4, 2));
        assert!(s.remove(11));
        assert!(!s.remove(11));
        let events = s.take_events();
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(events[3].event, KvEvent::Removed { hashes: vec![11] });
        let dump = s.dump();
        assert_eq!(dump.last_event_id, 4);
        assert_eq!(dump.blocks, vec![(None, 10), (None, 12)]);
    }

    /// Random inserts, serves and removes of random sizes and priorities: the budget always holds,
    /// `used` is the sum of what is held, and replaying the events gives exactly the contents.
    #[test]
    fn budgets_hold_under_a_randomized_workload() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let budget = rng.random_range(1_000..50_000);
            let mut s = TierStore::new(budget);
            let mut replayed: HashSet<u64> = HashSet::new();
            let mut sizes: HashMap<u64, u64> = HashMap::new();
            for _ in 0..5_000 {
                let hash = rng.random_range(0..400u64);
                match rng.random_range(0..10) {
                    0..=5 => {
                        let bytes = rng.random_range(1..budget / 4);
                        if s.insert(hash, None, bytes, rng.random_range(0..3)).is_ok() && !sizes.contains_key(&hash) {
                            sizes.insert(hash, bytes);
                        }
                    }
                    6..=8 => {
                        s.serve(hash);
                    }
                    _ => {
                        s.remove(hash);
                    }
                }
                assert!(s.used() <= budget, "seed {seed}: {} > {budget}", s.used());
                for r in s.take_events() {
                    match r.event {
                        KvEvent::Stored { hashes, .. } => replayed.extend(hashes),
                        KvEvent::Removed { hashes } => hashes.iter().for_each(|h| {
                            replayed.remove(h);
                            sizes.remove(h);
                        }),
                        KvEvent::Cleared => replayed.clear(),
                    }
                }
                let held: HashSet<u64> = s.dump().blocks.iter().map(|b| b.1).collect();
                assert_eq!(held, replayed, "seed {seed}");
                assert_eq!(s.used(), held.iter().map(|h| sizes[h]).sum::<u64>(), "seed {seed}");
            }
        }
    }
}
