//! The discrete-event cluster: each worker is the real engine (scheduler and block pool) over a
//! `SimulatedExecutor`; placement is the real router core (`Placer`: the KV index, the cost
//! function and the predicted load, or a baseline policy), fed the workers' KV events. Virtual
//! time only: a step's outputs, and the KV events it caused, take effect when the step would have
//! finished. With host tiers, each worker's pool evicts into its own `TierStore` (write-back),
//! the tiers publish to the placer like the pools do, and a request the placer names a tier for
//! waits for the blocks to move (the tier link's latency plus size over bandwidth) before it runs,
//! when `onboard_pays` says moving beats prefilling.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use gpu::engine::{Engine, EngineLimits, Reservation};
use gpu::executor::{SimulatedExecutor, StepClock, TestTokenizer, TimingModel};
use policy::cache::onboard::{onboard_pays, transfer_time};
use policy::cache::store::{Evicted, TierStore};
use policy::router::cost::CostConfig;
use policy::router::index::Tier;
use policy::router::placer::{Placer, PlacerConfig};
use vocab::blocks::BlockHasher;
use vocab::config::{OffloadMode, TierLink};
use vocab::ids::RequestId;
use vocab::kv::{KvBatch, KvEventRecord};
use vocab::request::{GenerateRequest, SamplingParams, StreamEvent};

use crate::queue::EventQueue;
use crate::trace::{TraceRequest, synthesize_prompt};

/// How requests are placed: the router's policies.
pub use vocab::config::RoutingPolicy as Policy;

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub workers: usize,
    pub blocks_per_worker: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    pub policy: Policy,
    pub seed: u64,
    /// Arrivals happen this many times faster than the trace says.
    pub speed: f64,
    pub timing: TimingModel,
    pub max_batch: usize,
    pub max_batch_tokens: usize,
    pub cost: CostConfig,
    /// A host tier beside each worker.
    pub tiers: Option<SimTiers>,
}

/// Cache tiers in the simulation: a host tier and a disk tier per worker, on its node.
#[derive(Clone, Debug)]
pub struct SimTiers {
    /// Each host tier's budget, in blocks (0: none; the pool offloads to disk).
    pub host_blocks: usize,
    /// Each disk tier's budget, in blocks (0: none).
    pub disk_blocks: usize,
    /// A block the host tier evicts moves to disk once it was served this many times.
    pub disk_after_reuses: u32,
    /// Bytes of one KV block, for transfer times.
    pub block_bytes: u64,
    /// A worker's own node's host and disk tiers.
    pub host: TierLink,
    pub disk: TierLink,
    /// Another node's tier.
    pub remote: TierLink,
    /// What moving blocks is weighed against.
    pub prefill_tokens_per_s: f64,
}

/// Counts of onboarding, over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierCounts {
    /// Requests whose leading blocks came from a tier: the worker's own node's, another's.
    pub local_onboards: u64,
    pub remote_onboards: u64,
    /// Of the local ones, from the disk tier.
    pub disk_onboards: u64,
    /// Blocks the host tiers evicted into the disk tiers.
    pub demoted_blocks: u64,
    pub onboarded_blocks: u64,
    /// Tier hints not followed: moving would cost more than prefilling.
    pub declined: u64,
    /// Blocks the tiers took in, and evicted.
    pub offloaded_blocks: u64,
    pub tier_evictions: u64,
}

/// What happened to one request, in virtual time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestOutcome {
    pub arrival: Duration,
    pub worker: usize,
    pub prompt_tokens: u32,
    pub first_token: Option<Duration>,
    pub finished: Option<Duration>,
    pub generated: u32,
    pub rejected: bool,
}

/// A sample of the cluster at one point in virtual time.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub at: Duration,
    /// Prompt tokens served from a prefix cache, and all prompt tokens, so far.
    pub cached_tokens: u64,
    pub prompt_tokens: u64,
    /// Running plus waiting sequences per worker.
    pub load: Vec<usize>,
}

pub struct ClusterRun {
    pub requests: Vec<RequestOutcome>,
    pub samples: Vec<Sample>,
    /// Prompt tokens whose KV came from a prefix cache, over all workers.
    pub cached_tokens: u64,
    pub prompt_tokens: u64,
    pub makespan: Duration,
    pub tiers: TierCounts,
}

struct Worker {
    engine: Engine,
    clock: StepClock,
    busy: bool,
    /// Outputs and KV events of the step in progress, applied when it ends.
    pending: Vec<(RequestId, StreamEvent)>,
    pending_kv: Vec<KvEventRecord>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A worker's step ends (ordered before arrivals at the same instant).
    StepDone(usize),
    Arrival(usize),
    /// A request's onboarded blocks have landed.
    Onboarded(usize),
    Sample,
}

/// Tier keys are the worker's index with this bit set (and `DISK_BIT` for its disk tier).
const TIER_BIT: usize = 1 << 40;
const DISK_BIT: usize = 1 << 41;

/// One worker's node's tiers.
struct NodeTiers {
    host: Option<TierStore>,
    disk: Option<TierStore>,
}

/// Tokens the synthetic prompts use: printable ASCII of the test tokenizer.
pub(crate) const FIRST_TOKEN: u32 = 32;
pub(crate) const TOKEN_SPAN: u32 = 90;
pub(crate) const VOCAB: usize = 128;
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// A simulated worker's engine (the real scheduler and pool over the timing model) and its clock.
pub(crate) fn simulated_engine(config: &ClusterConfig, tokenizer: &Arc<TestTokenizer>) -> (Engine, StepClock) {
    let limits = EngineLimits {
        max_batch: config.max_batch,
        max_queue: usize::MAX / 2,
        context_length: 1 << 24,
        block_size: config.block_size,
        kv_blocks: config.blocks_per_worker,
        max_batch_tokens: config.max_batch_tokens,
    };
    let exec = SimulatedExecutor::new(config.timing, VOCAB, 1 << 24, u32::from(b'a'));
    let clock = exec.step_clock();
    (Engine::new(Box::new(exec), tokenizer.clone(), limits), clock)
}

pub fn run(config: &ClusterConfig, trace: &[TraceRequest]) -> ClusterRun {
    let tokenizer = Arc::new(TestTokenizer::default());
    let mut workers: Vec<Worker> = (0..config.workers)
        .map(|_| {
            let (engine, clock) = simulated_engine(config, &tokenizer);
            Worker { engine, clock, busy: false, pending: Vec::new(), pending_kv: Vec::new() }
        })
        .collect();
    let hasher = BlockHasher::new(config.block_size);
    let placer_config = PlacerConfig { policy: config.policy, cost: config.cost.clone(), ..PlacerConfig::default() };
    let mut placer: Placer<usize> = Placer::new(placer_config, config.seed)
        .with_locality(|w, t| *t & TIER_BIT != 0 && *t & !(TIER_BIT | DISK_BIT) == *w);
    let mut tiers: Vec<NodeTiers> = match &config.tiers {
        Some(t) => {
            for w in &mut workers {
                w.engine.set_offload(OffloadMode::WriteBack);
            }
            let store = |blocks: usize| (blocks > 0).then(|| TierStore::new(blocks as u64 * t.block_bytes));
            (0..config.workers).map(|_| NodeTiers { host: store(t.host_blocks), disk: store(t.disk_blocks) }).collect()
        }
        None => Vec::new(),
    };
    let mut counts = TierCounts::default();
    // Requests waiting for their onboarded blocks: (reservation, hashes to commit, request).
    let mut landing: HashMap<usize, (Reservation, Vec<u64>, GenerateRequest)> = HashMap::new();
    let candidates: Vec<usize> = (0..config.workers).collect();
    let mut outcomes: Vec<RequestOutcome> = vec![RequestOutcome::default(); trace.len()];
    let mut queue: EventQueue<Event> = EventQueue::new();
    for (i, r) in trace.iter().enumerate() {
        queue.push(r.arrival.div_f64(config.speed), Event::Arrival(i));
    }
    queue.push(Duration::ZERO, Event::Sample);
    let (mut prompt_tokens, mut samples, mut now) = (0u64, Vec::new(), Duration::ZERO);
    let mut done = 0usize;
    while let Some((at, event)) = queue.pop() {
        now = at;
        match event {
            Event::Arrival(i) => {
                let r = &trace[i];
                let tokens = synthesize_prompt(r, i, config.block_size, FIRST_TOKEN, TOKEN_SPAN);
                let hashes = hasher.sequence_hashes(&tokens);
                let id = RequestId(i.to_string());
                let decision = placer.place(&id, &hashes, &candidates, now);
                let w = decision.as_ref().map_or(0, |d| d.chosen().worker);
                let onboard = decision.and_then(|d| d.onboard);
                prompt_tokens += tokens.len() as u64;
                outcomes[i] =
                    RequestOutcome { arrival: now, worker: w, prompt_tokens: r.input_tokens, ..Default::default() };
                let req = GenerateRequest {
                    id: id.clone(),
                    tag: None,
                    trace: None,
                    prompt_tokens: tokens,
                    sampling: SamplingParams {
                        max_tokens: r.output_tokens.max(1),
                        ignore_eos: true,
                        ..Default::default()
                    },
                };
                if let (Some(o), Some(t)) = (onboard, &config.tiers) {
                    let usable = hasher.reusable_blocks(req.prompt_tokens.len());
                    let wanted = hashes[..(o.blocks as usize).min(usable)].to_vec();
                    let source = o.source & !(TIER_BIT | DISK_BIT);
                    let on_disk = o.source & DISK_BIT != 0;
                    let link = match (source == w, on_disk) {
                        (false, _) => &t.remote,
                        (true, true) => &t.disk,
                        (true, false) => &t.host,
                    };
                    if let Some(mut res) = workers[w].engine.reserve(&wanted) {
                        let have = res.cached.len();
                        let pays = onboard_pays(
                            res.fresh.len(),
                            t.block_bytes as usize,
                            config.block_size,
                            link,
                            t.prefill_tokens_per_s,
                        );
                        let node = &mut tiers[source];
                        let Some(store) = (if on_disk { node.disk.as_mut() } else { node.host.as_mut() }) else {
                            unreachable!("the placer names only tiers that published")
                        };
                        let n = if pays { store.lookup(&wanted[have..]) } else { 0 };
                        if !pays && !res.fresh.is_empty() {
                            counts.declined += 1;
                        }
                        let rest = res.fresh.split_off(n);
                        workers[w].engine.abort(Reservation { cached: Vec::new(), fresh: rest });
                        if n == 0 {
                            workers[w].engine.abort(res);
                        } else {
                            wanted[have..have + n].iter().for_each(|&h| {
                                store.serve(h);
                            });
                            if source == w {
                                counts.local_onboards += 1;
                                counts.disk_onboards += u64::from(on_disk);
                            } else {
                                counts.remote_onboards += 1;
                            }
                            counts.onboarded_blocks += n as u64;
                            let at = now + transfer_time(n, t.block_bytes as usize, link);
                            landing.insert(i, (res, wanted[..have + n].to_vec(), req));
                            queue.push(at, Event::Onboarded(i));
                            continue;
                        }
                    }
                }
                if workers[w].engine.submit(req).is_some() {
                    outcomes[i].rejected = true;
                    placer.finished(&id);
                    done += 1;
                    continue;
                }
                if !workers[w].busy {
                    start_step(&mut workers[w], now, w, &mut queue);
                }
            }
            Event::Onboarded(i) => {
                let (res, hashes, req) = landing.remove(&i).expect("each onboarding lands once");
                let w = outcomes[i].worker;
                workers[w].engine.commit(res, &hashes);
                if workers[w].engine.submit(req).is_some() {
                    outcomes[i].rejected = true;
                    placer.finished(&RequestId(i.to_string()));
                    done += 1;
                    continue;
                }
                if !workers[w].busy {
                    start_step(&mut workers[w], now, w, &mut queue);
                }
            }
            Event::StepDone(w) => {
                let worker = &mut workers[w];
                worker.busy = false;
                let records = std::mem::take(&mut worker.pending_kv);
                if !records.is_empty() {
                    placer.receive(&w, 0, &KvBatch::Events(records), now);
                }
                if let Some(t) = &config.tiers {
                    // Write-back: what the pool evicted (this step, or reservations) lands in its
                    // host tier (or disk, without one); what the host tier evicts moves to disk
                    // once it was reused enough.
                    let node = &mut tiers[w];
                    for b in worker.engine.take_offloaded() {
                        counts.offloaded_blocks += 1;
                        let demoted: Vec<Evicted> = match (&mut node.host, &mut node.disk) {
                            (Some(host), _) => host.insert(b.hash, b.parent, t.block_bytes, 0).unwrap_or_default(),
                            (None, Some(disk)) => {
                                counts.tier_evictions +=
                                    disk.insert(b.hash, b.parent, t.block_bytes, 0).map_or(0, |e| e.len()) as u64;
                                Vec::new()
                            }
                            (None, None) => Vec::new(),
                        };
                        counts.tier_evictions += demoted.len() as u64;
                        if let Some(disk) = &mut node.disk {
                            for e in demoted.into_iter().filter(|e| e.reuses >= t.disk_after_reuses) {
                                counts.demoted_blocks += 1;
                                let priority = e.reuses.min(u32::from(u8::MAX)) as u8;
                                counts.tier_evictions +=
                                    disk.insert(e.hash, e.parent, t.block_bytes, priority).map_or(0, |v| v.len())
                                        as u64;
                            }
                        }
                    }
                    for (store, key, tier) in [
                        (&mut node.host, w | TIER_BIT, Tier::Host),
                        (&mut node.disk, w | TIER_BIT | DISK_BIT, Tier::Disk),
                    ] {
                        let events = store.as_mut().map(TierStore::take_events).unwrap_or_default();
                        if !events.is_empty() {
                            placer.receive_tier(&key, tier, 0, &KvBatch::Events(events), now);
                        }
                    }
                }
                for (id, ev) in std::mem::take(&mut worker.pending) {
                    let i: usize = id.0.parse().expect("ids are indices");
                    let o = &mut outcomes[i];
                    match ev {
                        StreamEvent::Delta { tokens, .. } if tokens > 0 => {
                            if o.first_token.is_none() {
                                o.first_token = Some(now);
                                placer.first_token(&id);
                            }
                            o.generated += tokens;
                        }
                        StreamEvent::Delta { .. } | StreamEvent::Scored { .. } => {}
                        StreamEvent::Finished { usage, .. } => {
                            o.finished = Some(now);
                            o.generated = usage.completion_tokens;
                            placer.finished(&id);
                            done += 1;
                        }
                        StreamEvent::Failed(_) => {
                            o.rejected = true;
                            placer.finished(&id);
                            done += 1;
                        }
                    }
                }
                if worker.engine.has_work() {
                    start_step(worker, now, w, &mut queue);
                }
            }
            Event::Sample => {
                let cached: u64 = workers.iter().map(|w| w.engine.stats().cached_tokens).sum();
                samples.push(Sample {
                    at: now,
                    cached_tokens: cached,
                    prompt_tokens,
                    load: workers.iter().map(|w| w.engine.running() + w.engine.waiting()).collect(),
                });
                if done < trace.len() {
                    queue.push(now + SAMPLE_EVERY, Event::Sample);
                }
            }
        }
    }
    ClusterRun {
        requests: outcomes,
        samples,
        cached_tokens: workers.iter().map(|w| w.engine.stats().cached_tokens).sum(),
        prompt_tokens,
        makespan: now,
        tiers: counts,
    }
}

/// Run one engine step now; its outputs take effect when it ends.
fn start_step(worker: &mut Worker, now: Duration, w: usize, queue: &mut EventQueue<Event>) {
    let outputs = worker.engine.step().expect("the simulated executor does not fail");
    let took = worker.clock.last_step();
    worker.pending.extend(outputs);
    worker.pending_kv.extend(worker.engine.take_kv_events());
    if worker.pending.is_empty() && took.is_zero() && worker.engine.running() == 0 {
        // Nothing could be admitted and nothing runs: wait for the next arrival.
        return;
    }
    worker.busy = true;
    queue.push(now + took.max(Duration::from_micros(1)), Event::StepDone(w));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Synthetic;

    fn config(policy: Policy) -> ClusterConfig {
        ClusterConfig {
            workers: 4,
            blocks_per_worker: 64,
            block_size: 16,
            policy,
            seed: 3,
            speed: 1.0,
            timing: crate::simulate::DEFAULT_TIMING,
            max_batch: 32,
            max_batch_tokens: 512,
            cost: CostConfig { prefill_weight: 8.0, ..CostConfig::default() },
            tiers: None,
        }
    }

    #[test]
    fn kv_routing_reuses_shared_prefixes_and_runs_are_reproducible() {
        // Eight prefix groups of 6 blocks, sessions of 3 turns adding a block each.
        let trace = Synthetic {
            requests: 240,
            rate: 20.0,
            groups: 8,
            prefix_blocks: 6,
            own_blocks: 1,
            turns: 3,
            output_tokens: 8,
            block_tokens: 16,
        }
        .generate(5);
        let kv = run(&config(Policy::Kv), &trace);
        let rr = run(&config(Policy::RoundRobin), &trace);
        let ratio = |r: &ClusterRun| r.cached_tokens as f64 / r.prompt_tokens as f64;
        assert!(kv.requests.iter().all(|r| r.finished.is_some() && r.generated == 8));
        assert!(rr.requests.iter().all(|r| r.finished.is_some()));
        assert!(ratio(&kv) > ratio(&rr) + 0.1, "kv {} vs round-robin {}", ratio(&kv), ratio(&rr));
        // Round-robin spreads requests evenly, by construction.
        let per_worker = |r: &ClusterRun, w| r.requests.iter().filter(|q| q.worker == w).count();
        assert!((0..4).all(|w| per_worker(&rr, w) == 60));
        // Every first token comes after its arrival and before the end.
        assert!(kv.requests.iter().all(|r| r.arrival <= r.first_token.unwrap() && r.first_token <= r.finished));
        // The same seed, the same run.
        let again = run(&config(Policy::Kv), &trace);
        assert_eq!(again.requests, kv.requests);
        assert_eq!(again.samples, kv.samples);
    }

    #[test]
    fn host_tiers_raise_the_hit_ratio_of_small_pools() {
        // Forty prefix groups of 6 blocks: far more than four pools of 24 blocks hold.
        let trace = Synthetic {
            requests: 400,
            rate: 20.0,
            groups: 40,
            prefix_blocks: 6,
            own_blocks: 1,
            turns: 3,
            output_tokens: 8,
            block_tokens: 16,
        }
        .generate(9);
        let small = ClusterConfig { blocks_per_worker: 24, ..config(Policy::Kv) };
        let link = TierLink {
            bytes_per_s: vocab::config::ByteSize(10 << 30),
            latency: vocab::config::HumanDuration::from_micros(20),
        };
        let tiers = SimTiers {
            host_blocks: 400,
            disk_blocks: 0,
            disk_after_reuses: 1,
            block_bytes: 1 << 20,
            host: link,
            disk: link,
            remote: link,
            prefill_tokens_per_s: 10_000.0,
        };
        let without = run(&small, &trace);
        let with = run(&ClusterConfig { tiers: Some(tiers.clone()), ..small.clone() }, &trace);
        let ratio = |r: &ClusterRun| r.cached_tokens as f64 / r.prompt_tokens as f64;
        assert!(with.requests.iter().all(|r| r.finished.is_some() && r.generated == 8));
        assert!(ratio(&with) > ratio(&without) + 0.1, "with tiers {} vs without {}", ratio(&with), ratio(&without));
        // The same seed, the same run, tiers and all.
        let again = run(&ClusterConfig { tiers: Some(tiers.clone()), ..small.clone() }, &trace);
        assert_eq!((again.requests, again.tiers), (with.requests.clone(), with.tiers));
        let t = with.tiers;
        assert!(t.local_onboards + t.remote_onboards > 0 && t.onboarded_blocks > 0, "{t:?}");
        assert!(t.offloaded_blocks >= t.tier_evictions);
        assert_eq!(without.tiers, TierCounts::default());
        // Onboarding waits for the blocks: every first token still comes after its arrival.
        assert!(with.requests.iter().all(|r| r.arrival <= r.first_token.unwrap()));
        // Too slow a link to pay: hints are declined and nothing moves.
        let slow = TierLink { bytes_per_s: vocab::config::ByteSize(1 << 10), ..link };
        let declined = run(
            &ClusterConfig { tiers: Some(SimTiers { host: slow, remote: slow, ..tiers.clone() }), ..small.clone() },
            &trace,
        );
        assert_eq!(declined.tiers.onboarded_blocks, 0);
        assert!(declined.tiers.declined > 0);
        // A small host tier in front of a disk tier: reused blocks move down and are onboarded
        // from disk too; only the disk tier, and everything goes there.
        let layered = SimTiers { host_blocks: 40, disk_blocks: 400, ..tiers.clone() };
        let both = run(&ClusterConfig { tiers: Some(layered), ..small.clone() }, &trace);
        assert!(both.tiers.demoted_blocks > 0 && both.tiers.disk_onboards > 0, "{:?}", both.tiers);
        assert!(ratio(&both) > ratio(&without) + 0.1);
        let disk_only = run(
            &ClusterConfig { tiers: Some(SimTiers { host_blocks: 0, disk_blocks: 400, ..tiers }), ..small },
            &trace,
        );
        assert_eq!(disk_only.tiers.demoted_blocks, 0);
        assert_eq!(disk_only.tiers.disk_onboards, disk_only.tiers.local_onboards);
        assert!(disk_only.tiers.disk_onboards > 0);
    }
}
