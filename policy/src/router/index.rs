//! `KvIndex`: which worker holds which KV block, in which cache tier, built from the workers' KV
//! events. Sans-IO: the router actor and the simulator feed it events and ask it for matches.
//!
//! Blocks are keyed by their chained sequence hash (docs/design.md#block-hashes), so a hash names a whole prefix
//! and the radix tree over prompts flattens into one map: hash → holders. Holders are a bitset
//! over dense worker slots per tier, so matching a prompt intersects a few machine words per
//! block whatever the number of workers; each source (worker, tier) keeps the set of hashes it
//! holds, so removing a block, or a whole worker, costs O(1) per block.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Duration;

use vocab::kv::{KvDump, KvEvent, KvEventRecord};

/// Hashes u64 keys with one 64-bit mix (splitmix64's finaliser): block hashes are already
/// uniform, and SipHash would cost more than the rest of an index update.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockHashHasher(u64);

impl Hasher for BlockHashHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type BlockMap<V> = HashMap<u64, V, BuildHasherDefault<BlockHashHasher>>;
type BlockSet = HashSet<u64, BuildHasherDefault<BlockHashHasher>>;

/// A cache tier; lower tiers are cheaper to hold and dearer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Device = 0,
    Host = 1,
    Disk = 2,
    Remote = 3,
    /// Not reported but assumed: what the router placed on a worker that publishes no events
    /// (approximate mode), until its TTL runs out.
    Assumed = 4,
}

pub const TIERS: usize = 5;

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Host => "host",
            Tier::Disk => "disk",
            Tier::Remote => "remote",
            Tier::Assumed => "assumed",
        }
    }

    pub const ALL: [Tier; TIERS] = [Tier::Device, Tier::Host, Tier::Disk, Tier::Remote, Tier::Assumed];
}

/// A dense set of worker slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Slots(Vec<u64>);

impl Slots {
    fn set(&mut self, slot: usize) {
        let w = slot / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (slot % 64);
    }

    fn contains(&self, slot: usize) -> bool {
        self.0.get(slot / 64).is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn clear(&mut self, slot: usize) {
        if let Some(w) = self.0.get_mut(slot / 64) {
            *w &= !(1 << (slot % 64));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}

/// The holders of one block, per tier.
#[derive(Clone, Debug, Default)]
struct Holders([Slots; TIERS]);

impl Holders {
    fn is_empty(&self) -> bool {
        self.0.iter().all(Slots::is_empty)
    }
}

/// What an event did to the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied in order.
    Ok,
    /// Older than what the index already reflects (a duplicate, or from before a dump): ignored.
    Stale,
    /// Ids jumped from `expected` to `got`: the index has lost track of this source, which needs
    /// a dump (`KvIndex::resync`); until then its events are not applied.
    Gap { expected: u64, got: u64 },
    /// The source is waiting for a dump; the event was not applied.
    AwaitingDump,
}

/// One event stream: a worker's pool in one tier.
#[derive(Debug, Default)]
struct Source {
    blocks: BlockSet,
    /// Id of the last event reflected; None before the first.
    last_id: Option<u64>,
    awaiting_dump: bool,
    /// When the last event (or dump) arrived.
    last_heard: Option<Duration>,
}

/// How many consecutive prompt blocks a worker holds, counted per tier of the best copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlap {
    /// `by_tier[t]`: matched blocks whose best copy on this worker is in tier `t`.
    pub by_tier: [u32; TIERS],
}

impl Overlap {
    pub fn blocks(&self) -> u32 {
        self.by_tier.iter().sum()
    }
}

#[derive(Debug)]
pub struct KvIndex<W> {
    slots: HashMap<W, usize>,
    workers: Vec<Option<W>>,
    free_slots: Vec<usize>,
    blocks: BlockMap<Holders>,
    /// Per slot, per tier.
    sources: Vec<[Source; TIERS]>,
    /// Approximate mode: when each assumed block expires, per slot.
    assumed_until: Vec<HashMap<u64, Duration>>,
}

impl<W> Default for KvIndex<W> {
    fn default() -> Self {
        Self {
            slots: HashMap::new(),
            workers: Vec::new(),
            free_slots: Vec::new(),
            blocks: BlockMap::default(),
            sources: Vec::new(),
            assumed_until: Vec::new(),
        }
    }
}

impl<W: Clone + Eq + Hash> KvIndex<W> {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&mut self, worker: &W) -> usize {
        if let Some(&s) = self.slots.get(worker) {
            return s;
        }
        let s = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.workers.push(None);
                self.sources.push(Default::default());
                self.assumed_until.push(HashMap::new());
                self.workers.len() - 1
            }
        };
        self.workers[s] = Some(worker.clone());
        self.slots.insert(worker.clone(), s);
        s
    }

    /// Workers the index knows (that joined, published, or had blocks assumed).
    pub fn workers(&self) -> impl Iterator<Item = &W> {
        self.workers.iter().flatten()
    }

    /// Distinct blocks held anywhere.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    fn store(&mut self, slot: usize, tier: Tier, hash: u64) {
        if self.sources[slot][tier as usize].blocks.insert(hash) {
            self.blocks.entry(hash).or_default().0[tier as usize].set(slot);
        }
    }

    fn remove(&mut self, slot: usize, tier: Tier, hash: u64) {
        if self.sources[slot][tier as usize].blocks.remove(&hash) {
            Self::unhold(&mut self.blocks, slot, tier, hash);
        }
    }

    fn unhold(blocks: &mut BlockMap<Holders>, slot: usize, tier: Tier, hash: u64) {
        if let Some(h) = blocks.get_mut(&hash) {
            h.0[tier as usize].clear(slot);
            if h.is_empty() {
                blocks.remove(&hash);
            }
        }
    }

    fn clear_source(&mut self, slot: usize, tier: Tier) {
        for hash in std::mem::take(&mut self.sources[slot][tier as usize].blocks) {
            Self::unhold(&mut self.blocks, slot, tier, hash);
        }
    }

    /// Apply one event from `worker`'s pool in `tier`, received at `now`.
    pub fn apply(&mut self, worker: &W, tier: Tier, record: &KvEventRecord, now: Duration) -> Applied {
        let slot = self.slot(worker);
        let source = &mut self.sources[slot][tier as usize];
        source.last_heard = Some(now);
        if source.awaiting_dump {
            return Applied::AwaitingDump;
        }
        // Pools number their events from 1: a source first heard later than that has a past
        // the index never saw, and needs a dump like any other gap.
        let expected = source.last_id.map_or(1, |last| last + 1);
        if record.id < expected {
            return Applied::Stale;
        }
        if record.id != expected {
            source.awaiting_dump = true;
            return Applied::Gap { expected, got: record.id };
        }
        source.last_id = Some(record.id);
        match &record.event {
            KvEvent::Stored { hashes, .. } => hashes.iter().for_each(|&h| self.store(slot, tier, h)),
            KvEvent::Removed { hashes } => hashes.iter().for_each(|&h| self.remove(slot, tier, h)),
            KvEvent::Cleared => self.clear_source(slot, tier),
        }
        Applied::Ok
    }

    /// A source's heartbeat: its latest event id is `last_event_id`. If the index has not seen
    /// that far, the last events were lost (no later one will reveal the gap): it needs a dump.
    pub fn heartbeat(&mut self, worker: &W, tier: Tier, last_event_id: u64, now: Duration) -> Applied {
        let slot = self.slot(worker);
        let source = &mut self.sources[slot][tier as usize];
        source.last_heard = Some(now);
        let seen = source.last_id.unwrap_or(0);
        if source.awaiting_dump {
            Applied::AwaitingDump
        } else if last_event_id > seen {
            source.awaiting_dump = true;
            Applied::Gap { expected: seen + 1, got: last_event_id }
        } else {
            Applied::Ok
        }
    }

    /// Replace what the index holds for `worker` in `tier` with a full dump; events up to the
    /// dump's last id are then stale, later ones apply.
    pub fn resync(&mut self, worker: &W, tier: Tier, dump: &KvDump, now: Duration) {
        let slot = self.slot(worker);
        self.clear_source(slot, tier);
        for &(_, hash) in &dump.blocks {
            self.store(slot, tier, hash);
        }
        let source = &mut self.sources[slot][tier as usize];
        source.last_id = Some(dump.last_event_id);
        source.awaiting_dump = false;
        source.last_heard = Some(now);
    }

    /// Sources that lost track and wait for a dump.
    pub fn awaiting_dump(&self) -> Vec<(W, Tier)> {
        self.sources_where(|s| s.awaiting_dump)
    }

    /// Sources that published before but have been silent for longer than `silence` at `now`.
    pub fn silent(&self, now: Duration, silence: Duration) -> Vec<(W, Tier)> {
        self.sources_where(|s| s.last_heard.is_some_and(|t| now.saturating_sub(t) > silence))
    }

    fn sources_where(&self, f: impl Fn(&Source) -> bool) -> Vec<(W, Tier)> {
        let mut out = Vec::new();
        for (slot, tiers) in self.sources.iter().enumerate() {
            let Some(w) = &self.workers[slot] else { continue };
            for tier in Tier::ALL {
                if f(&tiers[tier as usize]) {
                    out.push((w.clone(), tier));
                }
            }
        }
        out
    }

    /// A worker left: forget everything it held.
    pub fn remove_worker(&mut self, worker: &W) {
        let Some(slot) = self.slots.remove(worker) else { return };
        for tier in Tier::ALL {
            self.clear_source(slot, tier);
        }
        self.sources[slot] = Default::default();
        self.assumed_until[slot].clear();
        self.workers[slot] = None;
        self.free_slots.push(slot);
    }

    /// Approximate mode: `worker` publishes no events, so assume the blocks the router just placed
    /// there are cached until `now + ttl`.
    pub fn assume(&mut self, worker: &W, hashes: &[u64], now: Duration, ttl: Duration) {
        let slot = self.slot(worker);
        for &h in hashes {
            self.store(slot, Tier::Assumed, h);
            self.assumed_until[slot].insert(h, now + ttl);
        }
    }

    /// Drop what was assumed of `worker` (it turned out to publish events after all).
    pub fn forget_assumed(&mut self, worker: &W) {
        if let Some(&slot) = self.slots.get(worker) {
            self.clear_source(slot, Tier::Assumed);
            self.assumed_until[slot].clear();
        }
    }

    /// Drop assumed blocks whose TTL ran out by `now`.
    pub fn expire(&mut self, now: Duration) {
        for slot in 0..self.assumed_until.len() {
            let expired: Vec<u64> =
                self.assumed_until[slot].iter().filter(|&(_, &until)| until <= now).map(|(&h, _)| h).collect();
            for h in expired {
                self.assumed_until[slot].remove(&h);
                self.remove(slot, Tier::Assumed, h);
            }
        }
    }

    /// For each worker holding at least the first block of `hashes` (a prompt's sequence hashes),
    /// how many consecutive blocks from the start it holds, by the tier of its best copy.
    /// Costs a few word operations per block plus one step per worker that drops out or holds a
    /// block below the device tier, not one per worker per block.
    pub fn find_matches(&self, hashes: &[u64]) -> Vec<(W, Overlap)> {
        let words = self.workers.len().div_ceil(64);
        let word = |s: &Slots, i: usize| s.0.get(i).copied().unwrap_or(0);
        let mut active = vec![0u64; words];
        let mut first = vec![0u64; words];
        // Matched length per slot, set when it drops out (u32::MAX: still matching at the end).
        let mut matched = vec![u32::MAX; words * 64];
        // (slot, tier) for each matched block whose best copy is below the device tier.
        let mut below: Vec<(usize, Tier)> = Vec::new();
        let mut n = 0u32;
        for hash in hashes {
            let Some(h) = self.blocks.get(hash) else { break };
            // Most blocks live in one tier: only the tiers holding this block are looked at.
            let tiers: Vec<Tier> = Tier::ALL.into_iter().filter(|&t| !h.0[t as usize].0.is_empty()).collect();
            let mut any_left = false;
            for i in 0..words {
                let held = tiers.iter().fold(0, |acc, &t| acc | word(&h.0[t as usize], i));
                let now = if n == 0 { held } else { active[i] & held };
                if n == 0 {
                    first[i] = now;
                }
                let mut dropped = active[i] & !now;
                while dropped != 0 {
                    matched[i * 64 + dropped.trailing_zeros() as usize] = n;
                    dropped &= dropped - 1;
                }
                // Which tier each still-matching worker's best copy is in, below the device.
                if now != 0 && tiers.iter().any(|&t| t != Tier::Device) {
                    let mut better = word(&h.0[Tier::Device as usize], i);
                    for &tier in tiers.iter().filter(|&&t| t != Tier::Device) {
                        let mut lower = now & word(&h.0[tier as usize], i) & !better;
                        while lower != 0 {
                            below.push((i * 64 + lower.trailing_zeros() as usize, tier));
                            lower &= lower - 1;
                        }
                        better |= word(&h.0[tier as usize], i);
                    }
                }
                active[i] = now;
                any_left |= now != 0;
            }
            if !any_left {
                break;
            }
            n += 1;
        }
        let mut out: Vec<(usize, Overlap)> = Vec::with_capacity(first.iter().map(|w| w.count_ones() as usize).sum());
        // Where each slot's entry is in `out`.
        let mut at = vec![0u32; words * 64];
        for (i, &w) in first.iter().enumerate() {
            let mut bits = w;
            while bits != 0 {
                let slot = i * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let mut o = Overlap::default();
                o.by_tier[Tier::Device as usize] = if matched[slot] == u32::MAX { n } else { matched[slot] };
                at[slot] = out.len() as u32;
                out.push((slot, o));
            }
        }
        for (slot, tier) in below {
            let o = &mut out[at[slot] as usize].1;
            o.by_tier[Tier::Device as usize] -= 1;
            o.by_tier[tier as usize] += 1;
        }
        out.into_iter().filter_map(|(s, o)| Some((self.workers[s].clone()?, o))).collect()
    }

    /// How many consecutive blocks of `hashes`, from index `start` on, `source` holds (in any
    /// tier): how far a cache tier continues a prefix a worker holds up to `start`.
    pub fn run_from(&self, source: &W, hashes: &[u64], start: usize) -> u32 {
        let Some(&slot) = self.slots.get(source) else { return 0 };
        let held = |h: &&u64| self.blocks.get(*h).is_some_and(|b| b.0.iter().any(|s| s.contains(slot)));
        hashes.get(start..).map_or(0, |rest| rest.iter().take_while(held).count() as u32)
    }

    /// Whether `worker` ever published events or a dump (in any tier but `Assumed`).
    pub fn heard_from(&self, worker: &W) -> bool {
        self.slots.get(worker).is_some_and(|&s| {
            Tier::ALL.iter().any(|&t| t != Tier::Assumed && self.sources[s][t as usize].last_heard.is_some())
        })
    }

    /// Per worker, how many blocks the index believes it holds in each tier.
    pub fn blocks_by_worker(&self) -> Vec<(W, [usize; TIERS])> {
        self.slots.iter().map(|(w, &s)| (w.clone(), std::array::from_fn(|t| self.sources[s][t].blocks.len()))).collect()
    }

    /// An order-independent digest of every (worker, tier, block) that workers published (not
    /// the assumed ones, which are each router's own), with `key` naming the worker: two indexes
    /// fed the same events have equal fingerprints.
    pub fn fingerprint(&self, key: impl Fn(&W) -> u64) -> u64 {
        let mix = |x: u64| {
            let mut h = BlockHashHasher::default();
            h.write_u64(x);
            h.finish()
        };
        let mut sum = 0u64;
        for (w, &s) in &self.slots {
            let k = mix(key(w));
            for tier in Tier::ALL.into_iter().filter(|&t| t != Tier::Assumed) {
                for &hash in &self.sources[s][tier as usize].blocks {
                    sum = sum.wrapping_add(mix(k ^ mix(hash ^ tier as u64)));
                }
            }
        }
        sum
    }

    /// The blocks `worker` holds in `tier`, as the index believes.
    pub fn held(&self, worker: &W, tier: Tier) -> HashSet<u64> {
        self.slots
            .get(worker)
            .map(|&s| self.sources[s][tier as usize].blocks.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const T0: Duration = Duration::ZERO;

    fn stored(id: u64, hashes: &[u64]) -> KvEventRecord {
        KvEventRecord { id, event: KvEvent::Stored { parent: None, hashes: hashes.to_vec() } }
    }

    fn removed(id: u64, hashes: &[u64]) -> KvEventRecord {
        KvEventRecord { id, event: KvEvent::Removed { hashes: hashes.to_vec() } }
    }

    fn overlap(device: u32, host: u32) -> Overlap {
        let mut o = Overlap::default();
        o.by_tier[Tier::Device as usize] = device;
        o.by_tier[Tier::Host as usize] = host;
        o
    }

    #[test]
    fn matches_by_hand() {
        // Prompt blocks 1 2 3 4. a holds 1 2 3 on the device; b holds 1 2 on the device and 3 4 in
        // host memory; c holds 2 3 4 (not 1: no match at all); d holds 1 in host memory only.
        let mut ix = KvIndex::new();
        assert_eq!(ix.apply(&"a", Tier::Device, &stored(1, &[1, 2, 3]), T0), Applied::Ok);
        assert_eq!(ix.apply(&"b", Tier::Device, &stored(1, &[1, 2]), T0), Applied::Ok);
        assert_eq!(ix.apply(&"b", Tier::Host, &stored(1, &[3, 4, 1]), T0), Applied::Ok);
        assert_eq!(ix.apply(&"c", Tier::Device, &stored(1, &[2, 3, 4]), T0), Applied::Ok);
        assert_eq!(ix.apply(&"d", Tier::Host, &stored(1, &[1]), T0), Applied::Ok);
        let mut m = ix.find_matches(&[1, 2, 3, 4]);
        m.sort_by_key(|(w, _)| *w);
        // b's block 1 is on the device and in host memory: the device copy counts.
        assert_eq!(m, vec![("a", overlap(3, 0)), ("b", overlap(2, 2)), ("d", overlap(0, 1))]);
        assert_eq!(ix.len(), 4);
        // A prompt starting elsewhere matches nobody.
        assert!(ix.find_matches(&[9, 1]).is_empty());
        // Removal: a loses block 2, so its match stops at 1.
        assert_eq!(ix.apply(&"a", Tier::Device, &removed(2, &[2]), T0), Applied::Ok);
        let a = ix.find_matches(&[1, 2, 3]).into_iter().find(|(w, _)| *w == "a").unwrap().1;
        assert_eq!(a, overlap(1, 0));
        // A worker leaving takes its blocks with it; its slot is reused by the next one.
        ix.remove_worker(&"b");
        ix.remove_worker(&"c");
        ix.remove_worker(&"d");
        assert_eq!(ix.len(), 2, "a's blocks 1 and 3");
        assert_eq!(ix.apply(&"e", Tier::Device, &stored(1, &[1]), T0), Applied::Ok);
        assert_eq!(ix.workers().count(), 2);
        let mut m = ix.find_matches(&[1]);
        m.sort_by_key(|(w, _)| *w);
        assert_eq!(m, vec![("a", overlap(1, 0)), ("e", overlap(1, 0))]);
    }

    #[test]
    fn gaps_stale_events_and_resync() {
        let mut ix = KvIndex::new();
        assert_eq!(ix.apply(&0, Tier::Device, &stored(1, &[10]), T0), Applied::Ok);
        assert_eq!(ix.apply(&0, Tier::Device, &stored(1, &[10]), T0), Applied::Stale);
        // Event 2 is lost; 3 reveals the gap and nothing applies until a dump arrives.
        assert_eq!(ix.apply(&0, Tier::Device, &stored(3, &[12]), T0), Applied::Gap { expected: 2, got: 3 });
        assert_eq!(ix.apply(&0, Tier::Device, &stored(4, &[13]), T0), Applied::AwaitingDump);
        assert_eq!(ix.awaiting_dump(), vec![(0, Tier::Device)]);
        let dump = KvDump { last_event_id: 4, blocks: vec![(None, 11), (Some(11), 12), (Some(12), 13)] };
        ix.resync(&0, Tier::Device, &dump, T0);
        assert!(ix.awaiting_dump().is_empty());
        assert_eq!(ix.held(&0, Tier::Device), HashSet::from([11, 12, 13]));
        assert_eq!(ix.apply(&0, Tier::Device, &removed(4, &[13]), T0), Applied::Stale, "in the dump already");
        assert_eq!(ix.apply(&0, Tier::Device, &removed(5, &[13]), T0), Applied::Ok);
        assert_eq!(ix.held(&0, Tier::Device), HashSet::from([11, 12]));
        // A source first heard after its start is a gap too.
        assert_eq!(ix.apply(&1, Tier::Device, &stored(7, &[1]), T0), Applied::Gap { expected: 1, got: 7 });
        // A heartbeat ahead of what the index saw means the last events were lost.
        assert_eq!(ix.heartbeat(&0, Tier::Device, 5, T0), Applied::Ok);
        assert_eq!(ix.heartbeat(&0, Tier::Device, 6, T0), Applied::Gap { expected: 6, got: 6 });
        ix.resync(&0, Tier::Device, &KvDump { last_event_id: 5, blocks: vec![(None, 11), (Some(11), 12)] }, T0);
        // Cleared drops the source's blocks.
        ix.apply(&0, Tier::Device, &KvEventRecord { id: 6, event: KvEvent::Cleared }, T0);
        assert!(ix.is_empty());
    }

    #[test]
    fn silence_and_assumed_blocks_expire() {
        let s = Duration::from_secs;
        let mut ix = KvIndex::new();
        ix.apply(&"a", Tier::Device, &stored(1, &[1]), s(1));
        ix.apply(&"b", Tier::Device, &stored(1, &[2]), s(5));
        assert_eq!(ix.silent(s(8), s(4)), vec![("a", Tier::Device)]);
        // Approximate mode: c publishes nothing; what was placed there counts until the TTL.
        ix.assume(&"c", &[1, 3], s(5), s(10));
        let m = ix.find_matches(&[1, 3]);
        let c = m.iter().find(|(w, _)| *w == "c").unwrap();
        assert_eq!(c.1.by_tier[Tier::Assumed as usize], 2);
        ix.expire(s(14));
        assert_eq!(ix.find_matches(&[1, 3]).len(), 2, "a and c still");
        ix.expire(s(15));
        assert_eq!(ix.find_matches(&[1, 3]).iter().map(|(w, _)| *w).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(ix.held(&"c", Tier::Assumed), HashSet::new());
    }
}
