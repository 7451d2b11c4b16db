//! The discrete-event cluster: each worker is the real engine (scheduler and block pool) over a
//! `SimulatedExecutor`; placement is the real router core (`Placer`: the KV index, the cost
//! function and the predicted load, or a baseline policy), fed the workers' KV events. Virtual
//! time only: a step's outputs, and the KV events it caused, take effect when the step would have
//! finished.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use actors::router::cost::CostConfig;
use actors::router::placer::{Placer, PlacerConfig};
use gpu::engine::{Engine, EngineLimits};
use gpu::executor::{SimulatedExecutor, StepClock, TestTokenizer, TimingModel};
use runtime::blocks::BlockHasher;
use runtime::ids::RequestId;
use runtime::kv::{KvBatch, KvEventRecord};
use runtime::request::{GenerateRequest, SamplingParams, StreamEvent};

use crate::trace::{TraceRequest, synthesize_prompt};

/// How requests are placed: the router's policies.
pub use runtime::config::RoutingPolicy as Policy;

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
            }
        })
        .collect();
    let hasher = BlockHasher::new(config.block_size);
    let placer_config = PlacerConfig { policy: config.policy, cost: config.cost.clone(), ..PlacerConfig::default() };
    let mut placer: Placer<usize> = Placer::new(placer_config, config.seed);
    let candidates: Vec<usize> = (0..config.workers).collect();
    let mut outcomes: Vec<RequestOutcome> = vec![RequestOutcome::default(); trace.len()];
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
    let (mut prompt_tokens, mut samples, mut now) = (0u64, Vec::new(), Duration::ZERO);
    let mut done = 0usize;
    while let Some(Reverse((at, event, _))) = queue.pop() {
        now = at;
        match event {
            Event::Arrival(i) => {
                let r = &trace[i];
                let tokens = synthesize_prompt(r, i, config.block_size, FIRST_TOKEN, TOKEN_SPAN);
                let hashes = hasher.sequence_hashes(&tokens);
                let id = RequestId(i.to_string());
                let w = placer.place(&id, &hashes, &candidates, now).map_or(0, |d| d.chosen().worker);
                prompt_tokens += tokens.len() as u64;
                outcomes[i] =
                    RequestOutcome { arrival: now, worker: w, prompt_tokens: r.input_tokens, ..Default::default() };
                let req = GenerateRequest {
                    id: id.clone(),
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
                    placer.finished(&id);
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
                let records = std::mem::take(&mut worker.pending_kv);
                if !records.is_empty() {
                    placer.receive(&w, 0, &KvBatch::Events(records), now);
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
                        StreamEvent::Delta { .. } => {}
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
