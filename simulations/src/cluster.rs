//! The discrete-event cluster: each worker is the real engine (scheduler and block pool) over a
//! `SimulatedExecutor`; placement is the real router core (`KvIndex` and the cost function) or a
//! baseline policy. Virtual time only: a step's outputs, and the KV events it caused, take effect
//! when the step would have finished.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use actors::router::cost::{CostConfig, Load, decide};
use actors::router::index::{KvIndex, Overlap, Tier};
use gpu::engine::{Engine, EngineLimits};
use gpu::executor::{SimulatedExecutor, StepClock, TestTokenizer, TimingModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::blocks::BlockHasher;
use runtime::ids::RequestId;
use runtime::kv::KvEventRecord;
use runtime::request::{GenerateRequest, SamplingParams, StreamEvent};

use crate::trace::{TraceRequest, synthesize_prompt};

/// How requests are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The KV-aware cost of `actors::router::cost` over the index built from KV events.
    Kv,
    RoundRobin,
    Random,
    /// Fewest predicted blocks of work.
    LeastLoaded,
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kv" => Ok(Policy::Kv),
            "round-robin" => Ok(Policy::RoundRobin),
            "random" => Ok(Policy::Random),
            "least-loaded" => Ok(Policy::LeastLoaded),
            other => Err(format!("unknown policy {other:?} (kv, round-robin, random, least-loaded)")),
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Kv => "kv",
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
            Policy::LeastLoaded => "least-loaded",
        })
    }
}

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
}

struct Worker {
    engine: Engine,
    clock: StepClock,
    busy: bool,
    /// Outputs and KV events of the step in progress, applied when it ends.
    pending: Vec<(RequestId, StreamEvent)>,
    pending_kv: Vec<KvEventRecord>,
    load: Load,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A worker's step ends (ordered before arrivals at the same instant).
    StepDone(usize),
    Arrival(usize),
    Sample,
}

/// Tokens the synthetic prompts use: printable ASCII of the test tokenizer.
const FIRST_TOKEN: u32 = 32;
const TOKEN_SPAN: u32 = 90;
const VOCAB: usize = 128;
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

pub fn run(config: &ClusterConfig, trace: &[TraceRequest]) -> ClusterRun {
    let tokenizer = Arc::new(TestTokenizer::default());
    let limits = EngineLimits {
        max_batch: config.max_batch,
        max_queue: usize::MAX / 2,
        context_length: 1 << 24,
        block_size: config.block_size,
        kv_blocks: config.blocks_per_worker,
        max_batch_tokens: config.max_batch_tokens,
    };
    let mut workers: Vec<Worker> = (0..config.workers)
        .map(|_| {
            let exec = SimulatedExecutor::new(config.timing, VOCAB, 1 << 24, u32::from(b'a'));
            let clock = exec.step_clock();
            Worker {
                engine: Engine::new(Box::new(exec), tokenizer.clone(), limits),
                clock,
                busy: false,
                pending: Vec::new(),
                pending_kv: Vec::new(),
                load: Load::default(),
            }
        })
        .collect();
    let hasher = BlockHasher::new(config.block_size);
    let mut index: KvIndex<usize> = KvIndex::new();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut outcomes: Vec<RequestOutcome> = vec![RequestOutcome::default(); trace.len()];
    // Per request: blocks counted in its worker's predicted prefill and decode load.
    let mut counted: Vec<(u64, u64)> = vec![(0, 0); trace.len()];
    let mut queue: BinaryHeap<Reverse<(Duration, Event, u64)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, at: Duration, e: Event| {
        seq += 1;
        queue.push(Reverse((at, e, seq)));
    };
    for (i, r) in trace.iter().enumerate() {
        push(&mut queue, r.arrival.div_f64(config.speed), Event::Arrival(i));
    }
    push(&mut queue, Duration::ZERO, Event::Sample);
    let (mut prompt_tokens, mut samples, mut next_rr, mut now) = (0u64, Vec::new(), 0usize, Duration::ZERO);
    let mut done = 0usize;
    while let Some(Reverse((at, event, _))) = queue.pop() {
        now = at;
        match event {
            Event::Arrival(i) => {
                let r = &trace[i];
                let tokens = synthesize_prompt(r, i, config.block_size, FIRST_TOKEN, TOKEN_SPAN);
                let hashes = hasher.sequence_hashes(&tokens);
                let blocks = hashes.len() as u32;
                // Each worker's overlap with the prompt: one index lookup per arrival.
                let mut overlaps = vec![Overlap::default(); workers.len()];
                for (m, o) in index.find_matches(&hashes) {
                    overlaps[m] = o;
                }
                let w = match config.policy {
                    Policy::RoundRobin => {
                        next_rr += 1;
                        (next_rr - 1) % workers.len()
                    }
                    Policy::Random => rng.random_range(0..workers.len()),
                    Policy::LeastLoaded | Policy::Kv => {
                        // Candidates from a rotating start, so ties spread.
                        let start = i % workers.len();
                        let candidates = (0..workers.len())
                            .map(|k| (start + k) % workers.len())
                            .map(|w| {
                                // Least-loaded ignores what is cached.
                                let overlap =
                                    if config.policy == Policy::Kv { overlaps[w].clone() } else { Overlap::default() };
                                (w, overlap, workers[w].load)
                            })
                            .collect();
                        decide(&config.cost, blocks, candidates, &mut rng).map_or(0, |d| d.chosen().worker)
                    }
                };
                // Predicted load: the uncached blocks until the first token, then all of them.
                let cached = u64::from(overlaps[w].by_tier[Tier::Device as usize]);
                let new = u64::from(blocks).saturating_sub(cached);
                workers[w].load.prefill += new;
                counted[i] = (new, 0);
                prompt_tokens += tokens.len() as u64;
                outcomes[i] =
                    RequestOutcome { arrival: now, worker: w, prompt_tokens: r.input_tokens, ..Default::default() };
                let req = GenerateRequest {
                    id: RequestId(i.to_string()),
                    tag: None,
                    prompt_tokens: tokens,
                    sampling: SamplingParams {
                        max_tokens: r.output_tokens.max(1),
                        ignore_eos: true,
                        ..Default::default()
                    },
                };
                if workers[w].engine.submit(req).is_some() {
                    outcomes[i].rejected = true;
                    workers[w].load.prefill -= new;
                    done += 1;
                    continue;
                }
                if !workers[w].busy {
                    start_step(&mut workers[w], now, w, &mut queue, &mut push);
                }
            }
            Event::StepDone(w) => {
                let worker = &mut workers[w];
                worker.busy = false;
                for rec in std::mem::take(&mut worker.pending_kv) {
                    index.apply(&w, Tier::Device, &rec, now);
                }
                for (id, ev) in std::mem::take(&mut worker.pending) {
                    let i: usize = id.0.parse().expect("ids are indices");
                    let o = &mut outcomes[i];
                    match ev {
                        StreamEvent::Delta { tokens, .. } if tokens > 0 => {
                            if o.first_token.is_none() {
                                o.first_token = Some(now);
                                let (new, _) = counted[i];
                                let all = trace[i].input_tokens.div_ceil(config.block_size as u32) as u64;
                                worker.load.prefill = worker.load.prefill.saturating_sub(new);
                                worker.load.decode += all;
                                counted[i] = (0, all);
                            }
                            o.generated += tokens;
                        }
                        StreamEvent::Delta { .. } => {}
                        StreamEvent::Finished { usage, .. } => {
                            o.finished = Some(now);
                            o.generated = usage.completion_tokens;
                            let (new, all) = counted[i];
                            worker.load.prefill = worker.load.prefill.saturating_sub(new);
                            worker.load.decode = worker.load.decode.saturating_sub(all);
                            done += 1;
                        }
                        StreamEvent::Failed(_) => {
                            o.rejected = true;
                            done += 1;
                        }
                    }
                }
                if worker.engine.has_work() {
                    start_step(worker, now, w, &mut queue, &mut push);
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
                    push(&mut queue, now + SAMPLE_EVERY, Event::Sample);
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
    }
}

/// Run one engine step now; its outputs take effect when it ends.
fn start_step<F>(
    worker: &mut Worker,
    now: Duration,
    w: usize,
    queue: &mut BinaryHeap<Reverse<(Duration, Event, u64)>>,
    push: &mut F,
) where
    F: FnMut(&mut BinaryHeap<Reverse<(Duration, Event, u64)>>, Duration, Event),
{
    let outputs = worker.engine.step().expect("the simulated executor does not fail");
    let took = worker.clock.last_step();
    worker.pending.extend(outputs);
    worker.pending_kv.extend(worker.engine.take_kv_events());
    if worker.pending.is_empty() && took.is_zero() && worker.engine.running() == 0 {
        // Nothing could be admitted and nothing runs: wait for the next arrival.
        return;
    }
    worker.busy = true;
    push(queue, now + took.max(Duration::from_micros(1)), Event::StepDone(w));
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
}
