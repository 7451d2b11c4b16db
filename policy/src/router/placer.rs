//! `Placer`: the router's decisions as a plain struct over `now` and a seeded RNG. It picks a
//! worker for each prompt (KV-aware through `KvIndex` and `cost`, or round-robin, least-loaded,
//! random), predicts each worker's load from its own placements, and applies what workers
//! publish about their KV pools. The router actor and the simulator both drive it.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vocab::config::RoutingPolicy;
use vocab::ids::RequestId;
use vocab::kv::{KvBatch, KvDump};

use super::cost::{CostConfig, Decision, Load, decide};
use super::disagg::prefill_key;
use super::index::{Applied, KvIndex, Overlap, Tier};

/// How the placer decides.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacerConfig {
    pub policy: RoutingPolicy,
    pub cost: CostConfig,
    /// Approximate mode: how long a prompt placed on a worker that publishes no events is
    /// assumed to stay cached there.
    pub assumed_ttl: Duration,
}

impl Default for PlacerConfig {
    fn default() -> Self {
        Self { policy: RoutingPolicy::Kv, cost: CostConfig::default(), assumed_ttl: Duration::from_secs(120) }
    }
}

/// A request the placer counts in a worker's predicted load.
#[derive(Clone, Debug)]
struct Placed<W> {
    worker: W,
    /// Blocks of the prompt.
    prompt_blocks: u64,
    /// Blocks it was predicted to compute (not on the worker's device).
    new_blocks: u64,
    /// Past its first token: counted as decode load.
    decoding: bool,
}

/// A cache tier holds more of the prompt than the chosen worker: it may onboard from there.
#[derive(Clone, Debug, PartialEq)]
pub struct Onboard<W> {
    /// The tier's key.
    pub source: W,
    /// Which tier it is.
    pub tier: Tier,
    /// How the cost credited its blocks: its own tier on the worker's node, `Remote` elsewhere.
    pub credited_as: Tier,
    /// Leading prompt blocks it holds.
    pub blocks: u32,
}

/// What a publication did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heard {
    /// Events applied in order.
    pub applied: usize,
    /// Events older than what the index reflects, ignored.
    pub stale: usize,
    /// The index lost track of this worker: it needs the worker's dump (`Placer::resync`).
    pub needs_dump: bool,
    /// The worker restarted with a fresh pool: what it held before was forgotten.
    pub restarted: bool,
}

#[derive(Debug)]
pub struct Placer<W> {
    config: PlacerConfig,
    /// Device pools under worker keys, and cache tiers under their own keys (`tiers`).
    index: KvIndex<W>,
    /// The cache tiers that publish, and which tier each is, in the order first heard (so ties
    /// between tiers break the same way in every run).
    tiers: Vec<(W, Tier)>,
    /// Whether a tier (second) is on the same node as a worker (first): its blocks count in
    /// the tier's own credit there, and as `Remote` elsewhere.
    same_node: fn(&W, &W) -> bool,
    incarnations: HashMap<W, u64>,
    loads: HashMap<W, Load>,
    placed: HashMap<RequestId, Placed<W>>,
    next: usize,
    rng: StdRng,
}

impl<W: Clone + Eq + Hash> Placer<W> {
    pub fn new(config: PlacerConfig, seed: u64) -> Self {
        Self {
            config,
            index: KvIndex::new(),
            tiers: Vec::new(),
            same_node: |a, b| a == b,
            incarnations: HashMap::new(),
            loads: HashMap::new(),
            placed: HashMap::new(),
            next: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// How to tell that a cache tier is on a worker's node (by default: it has the worker's key).
    pub fn with_locality(mut self, same_node: fn(&W, &W) -> bool) -> Self {
        self.same_node = same_node;
        self
    }

    pub fn config(&self) -> &PlacerConfig {
        &self.config
    }

    pub fn index(&self) -> &KvIndex<W> {
        &self.index
    }

    /// The load the placer predicts for `worker`, in blocks.
    pub fn load(&self, worker: &W) -> Load {
        self.loads.get(worker).copied().unwrap_or_default()
    }

    /// Place `request`, whose prompt has the sequence hashes `hashes`, on one of `candidates`
    /// (ties go to a rotating order, so equal workers share the work), and count it in that
    /// worker's load. Placing a request again (a retry) first forgets the earlier placement.
    pub fn place(
        &mut self,
        request: &RequestId,
        hashes: &[u64],
        candidates: &[W],
        now: Duration,
    ) -> Option<Decision<W>> {
        self.forget(request);
        if candidates.is_empty() {
            return None;
        }
        let n = candidates.len();
        let start = self.next % n;
        self.next = self.next.wrapping_add(1);
        let mut overlaps: HashMap<W, Overlap> = HashMap::new();
        let kv = self.config.policy == RoutingPolicy::Kv;
        if kv {
            overlaps.extend(self.index.find_matches(hashes));
        }
        let mut onboards: HashMap<W, Onboard<W>> = HashMap::new();
        let rotated = (0..n).map(|k| candidates[(start + k) % n].clone());
        let terms = rotated
            .map(|w| {
                let mut overlap = overlaps.remove(&w).unwrap_or_default();
                if let Some(o) = self.best_tier(&w, &overlap, hashes).filter(|_| kv) {
                    overlap.by_tier[o.credited_as as usize] += o.blocks - overlap.blocks();
                    onboards.insert(w.clone(), o);
                }
                let load = self.load(&w);
                (w, overlap, load)
            })
            .collect();
        let prompt_blocks = hashes.len() as u32;
        let mut decision = decide(&self.config.cost, prompt_blocks, terms, &mut self.rng)?;
        match self.config.policy {
            RoutingPolicy::Kv | RoutingPolicy::LeastLoaded => {}
            RoutingPolicy::RoundRobin => decision.chosen = 0,
            RoutingPolicy::Random => decision.chosen = self.rng.random_range(0..n),
        }
        decision.onboard = onboards.remove(&decision.chosen().worker);
        let chosen = decision.chosen();
        let worker = chosen.worker.clone();
        let device = u64::from(chosen.overlap.by_tier[Tier::Device as usize]);
        let new_blocks = u64::from(prompt_blocks).saturating_sub(device);
        self.loads.entry(worker.clone()).or_default().prefill += new_blocks;
        self.placed.insert(
            request.clone(),
            Placed { worker: worker.clone(), prompt_blocks: u64::from(prompt_blocks), new_blocks, decoding: false },
        );
        if self.config.policy == RoutingPolicy::Kv && !self.index.heard_from(&worker) {
            self.index.assume(&worker, hashes, now, self.config.assumed_ttl);
        }
        Some(decision)
    }

    /// The cache tier that continues the prompt's prefix `worker` holds (`overlap`) furthest,
    /// weighted by the tiers' credits.
    fn best_tier(&self, worker: &W, overlap: &Overlap, hashes: &[u64]) -> Option<Onboard<W>> {
        let have = overlap.blocks();
        self.tiers
            .iter()
            .filter_map(|(source, tier)| {
                let more = self.index.run_from(source, hashes, have as usize);
                let credited_as = if (self.same_node)(worker, source) { *tier } else { Tier::Remote };
                (more > 0).then(|| Onboard { source: source.clone(), tier: *tier, credited_as, blocks: have + more })
            })
            .max_by(|a, b| {
                let gain =
                    |o: &Onboard<W>| self.config.cost.tier_credit[o.credited_as as usize] * f64::from(o.blocks - have);
                gain(a).total_cmp(&gain(b))
            })
    }

    /// `request` produced its first token: its prompt is no longer prefill load, its blocks are
    /// decode load, and a prefill worker that computed it (`route`) is done with it.
    pub fn first_token(&mut self, request: &RequestId) {
        self.forget(&prefill_key(request));
        let Some(p) = self.placed.get_mut(request) else { return };
        if p.decoding {
            return;
        }
        p.decoding = true;
        let load = self.loads.entry(p.worker.clone()).or_default();
        load.prefill = load.prefill.saturating_sub(p.new_blocks);
        load.decode += p.prompt_blocks;
    }

    /// `request` ended (finished, failed or cancelled), with its prefill if it had one.
    pub fn finished(&mut self, request: &RequestId) {
        self.forget(request);
        self.forget(&prefill_key(request));
    }

    /// One placement no longer counts in its worker's load.
    fn forget(&mut self, request: &RequestId) {
        let Some(p) = self.placed.remove(request) else { return };
        let load = self.loads.entry(p.worker).or_default();
        if p.decoding {
            load.decode = load.decode.saturating_sub(p.prompt_blocks);
        } else {
            load.prefill = load.prefill.saturating_sub(p.new_blocks);
        }
    }

    /// Requests counted in some worker's load.
    pub fn in_flight(&self) -> usize {
        self.placed.len()
    }

    /// A publication from `worker`'s device pool, whose current life is `incarnation`.
    pub fn receive(&mut self, worker: &W, incarnation: u64, batch: &KvBatch, now: Duration) -> Heard {
        self.receive_at(worker, Tier::Device, incarnation, batch, now)
    }

    /// A publication from a cache tier (`Tier::Host` or `Tier::Disk`) known as `source`.
    pub fn receive_tier(&mut self, source: &W, tier: Tier, incarnation: u64, batch: &KvBatch, now: Duration) -> Heard {
        match self.tiers.iter_mut().find(|(w, _)| w == source) {
            Some(known) => known.1 = tier,
            None => self.tiers.push((source.clone(), tier)),
        }
        self.receive_at(source, tier, incarnation, batch, now)
    }

    fn receive_at(&mut self, worker: &W, tier: Tier, incarnation: u64, batch: &KvBatch, now: Duration) -> Heard {
        let mut heard = Heard::default();
        if !self.index.heard_from(worker) {
            // Placed on before it was first heard from: what was assumed then is replaced by
            // what it publishes.
            self.index.forget_assumed(worker);
        }
        match self.incarnations.insert(worker.clone(), incarnation) {
            Some(old) if old != incarnation => {
                // A fresh pool numbers its events from 1 again.
                self.index.remove_worker(worker);
                heard.restarted = true;
            }
            _ => {}
        }
        match batch {
            KvBatch::Events(records) => {
                for record in records {
                    match self.index.apply(worker, tier, record, now) {
                        Applied::Ok => heard.applied += 1,
                        Applied::Stale => heard.stale += 1,
                        Applied::Gap { .. } | Applied::AwaitingDump => {
                            heard.needs_dump = true;
                            break;
                        }
                    }
                }
            }
            KvBatch::Heartbeat { last_event_id } => {
                heard.needs_dump = matches!(
                    self.index.heartbeat(worker, tier, *last_event_id, now),
                    Applied::Gap { .. } | Applied::AwaitingDump
                );
            }
        }
        heard
    }

    /// `worker`'s dump, taken in its life `incarnation`; ignored if the worker has restarted
    /// since.
    pub fn resync(&mut self, worker: &W, incarnation: u64, dump: &KvDump, now: Duration) -> bool {
        if self.incarnations.get(worker).is_some_and(|&i| i != incarnation) {
            return false;
        }
        self.incarnations.insert(worker.clone(), incarnation);
        let tier = self.tiers.iter().find(|(w, _)| w == worker).map_or(Tier::Device, |t| t.1);
        self.index.resync(worker, tier, dump, now);
        true
    }

    /// Forget the workers not in `live`: their blocks, loads and requests.
    pub fn retain(&mut self, live: &[W]) {
        let gone: Vec<W> = self.index.workers().filter(|w| !live.contains(w)).cloned().collect();
        for w in &gone {
            self.index.remove_worker(w);
        }
        self.incarnations.retain(|w, _| live.contains(w));
        self.tiers.retain(|(w, _)| live.contains(w));
        self.loads.retain(|w, _| live.contains(w));
        self.placed.retain(|_, p| live.contains(&p.worker));
    }

    /// Drop assumed blocks past their TTL.
    pub fn expire(&mut self, now: Duration) {
        self.index.expire(now);
    }

    /// Workers that published before and have been silent for longer than `silence`.
    pub fn silent(&self, now: Duration, silence: Duration) -> Vec<W> {
        let mut out: Vec<W> =
            self.index.silent(now, silence).into_iter().filter(|(_, t)| *t == Tier::Device).map(|(w, _)| w).collect();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests;
