//! The cluster run under a fault plan. Each worker is its own node: the real `Engine` over a
//! `SimulatedExecutor`; the router is the real `Placer`, fed KV event batches, heartbeats and
//! dumps as the node's link delivers them; the gateway keeps each request's streamed tokens and
//! places it again (prompt plus tokens so far, fewer to generate) when its worker fails: at once
//! for an engine crash, after the lease for a silent node. Outputs of a request's earlier
//! placements are discarded; a healed node's stale copies are cancelled.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gpu::engine::Engine;
use gpu::executor::{StepClock, TestTokenizer};
use policy::router::index::Tier;
use policy::router::placer::{Placer, PlacerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vocab::blocks::BlockHasher;
use vocab::ids::RequestId;
use vocab::kv::{KvBatch, KvEventRecord};
use vocab::request::{GenerateRequest, SamplingParams, StreamEvent};

use super::plan::{Fault, FaultPlan};
use crate::cluster::{
    ClusterConfig, ClusterRun, FIRST_TOKEN, RequestOutcome, SAMPLE_EVERY, Sample, TOKEN_SPAN, TierCounts,
    simulated_engine,
};
use crate::trace::{TraceRequest, synthesize_prompt};

/// The gateway's and cluster's settings that faults exercise.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// A node silent this long is declared dead (`cluster.lease_timeout`).
    pub lease: Duration,
    /// Moves of one request before it fails (`gateway.migrations`, counting re-placements).
    pub migrations: u32,
    /// Heartbeat period of each node's KV publisher.
    pub heartbeat: Duration,
    /// Test knob: deliver outputs of a request's earlier placements (a broken gateway), to show
    /// that the invariants catch it.
    pub(crate) deliver_stale: bool,
}

impl FaultConfig {
    /// A lease and a migration limit, with a heartbeat of a third of the lease.
    pub fn new(lease: Duration, migrations: u32) -> Self {
        Self { lease, migrations, heartbeat: lease / 3, deliver_stale: false }
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self { lease: Duration::from_secs(3), migrations: 2, heartbeat: Duration::from_secs(1), deliver_stale: false }
    }
}

/// What the faults did, over the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Faults of the plan that took effect.
    pub faults: u64,
    /// Re-placements of a request whose worker failed.
    pub migrated: u64,
    /// Requests that never ended.
    pub lost: u64,
    /// Tokens delivered twice (beyond what the request asked for), or second endings.
    pub duplicated: u64,
    /// Requests ended with an error: no live worker, or out of migrations.
    pub failed: u64,
    /// Outputs of earlier placements, discarded.
    pub stale_discarded: u64,
    /// Dumps the router asked for after a gap, a restart or a rejoin.
    pub dumps: u64,
    /// KV event batches lost on the way to the router.
    pub kv_batches_lost: u64,
}

/// The run, and what the faults did.
pub struct FaultRun {
    pub run: ClusterRun,
    pub counts: FaultCounts,
}

/// An invariant that did not hold, when.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at {:.3}s: {what}", at.as_secs_f64())]
pub struct Violation {
    pub at: Duration,
    pub what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    StepDone { worker: usize, incarnation: u64 },
    Deliver(u64),
    FaultStart(usize),
    FaultEnd(usize),
    LeaseExpired { worker: usize, silence: u64 },
    Arrival(usize),
    Heartbeat,
    Sample,
}

/// What a node sends: its requests' outputs (to the gateway) and a KV publication (to the router).
struct Delivery {
    worker: usize,
    incarnation: u64,
    outputs: Vec<(RequestId, StreamEvent)>,
    kv: Option<KvBatch>,
}

struct Node {
    engine: Engine,
    clock: StepClock,
    incarnation: u64,
    busy: bool,
    /// The process runs (false while a crashed node is down).
    up: bool,
    /// Cut off from the gateway and router.
    cut: bool,
    /// Declared dead by the lease (not a placement candidate until it rejoins).
    dead: bool,
    /// Bumped when the node falls silent; a lease timer of an older silence is void.
    silence: u64,
    slow: f64,
    delay: Duration,
    loss: f64,
    /// The latest delivery time, so deliveries stay in order when the link slows or recovers.
    last_delivery: Duration,
    last_event_id: u64,
    /// Deliveries held back while cut off; delivered when the cut heals before the lease.
    held: Vec<Delivery>,
    /// The outputs of the step in progress, sent when it ends.
    pending: Option<Delivery>,
}

/// The gateway's view of one client request.
struct Request {
    expected: u32,
    prompt: Vec<u32>,
    delivered: Vec<u32>,
    attempt: u32,
    worker: usize,
    migrations: u32,
    done: bool,
    /// Every (worker, attempt) it was placed as.
    placements: Vec<(usize, u32)>,
    /// The current placement has not reached its worker (down or cut off when placed).
    unsent: bool,
}

fn engine_id(i: usize, attempt: u32) -> RequestId {
    RequestId(format!("{i}.{attempt}"))
}

fn parse_id(id: &RequestId) -> (usize, u32) {
    let (i, a) = id.0.split_once('.').expect("ids are index.attempt");
    (i.parse().expect("index"), a.parse().expect("attempt"))
}

type Queue = BinaryHeap<Reverse<(Duration, Event, u64)>>;

struct Sim<'a> {
    config: &'a ClusterConfig,
    faults: &'a FaultConfig,
    plan: &'a FaultPlan,
    trace: &'a [TraceRequest],
    tokenizer: Arc<TestTokenizer>,
    nodes: Vec<Node>,
    placer: Placer<usize>,
    hasher: BlockHasher,
    requests: Vec<Request>,
    outcomes: Vec<RequestOutcome>,
    counts: FaultCounts,
    queue: Queue,
    seq: u64,
    deliveries: HashMap<u64, Delivery>,
    rng: StdRng,
    now: Duration,
    done: usize,
    open_faults: usize,
    prompt_tokens: u64,
    samples: Vec<Sample>,
}

/// Run `trace` on the cluster of `config` under `plan`; Err at the first invariant that fails.
pub fn run_with_faults(
    config: &ClusterConfig,
    trace: &[TraceRequest],
    plan: &FaultPlan,
    faults: &FaultConfig,
) -> Result<FaultRun, Violation> {
    let tokenizer = Arc::new(TestTokenizer::default());
    let nodes = (0..config.workers)
        .map(|_| {
            let (engine, clock) = simulated_engine(config, &tokenizer);
            Node {
                engine,
                clock,
                incarnation: 0,
                busy: false,
                up: true,
                cut: false,
                dead: false,
                silence: 0,
                slow: 1.0,
                delay: Duration::ZERO,
                loss: 0.0,
                last_delivery: Duration::ZERO,
                last_event_id: 0,
                held: Vec::new(),
                pending: None,
            }
        })
        .collect();
    let placer_config = PlacerConfig { policy: config.policy, cost: config.cost.clone(), ..PlacerConfig::default() };
    let mut sim = Sim {
        config,
        faults,
        plan,
        trace,
        tokenizer,
        nodes,
        placer: Placer::new(placer_config, config.seed),
        hasher: BlockHasher::new(config.block_size),
        requests: Vec::with_capacity(trace.len()),
        outcomes: vec![RequestOutcome::default(); trace.len()],
        counts: FaultCounts::default(),
        queue: BinaryHeap::new(),
        seq: 0,
        deliveries: HashMap::new(),
        rng: StdRng::seed_from_u64(config.seed ^ 0x10_57_e7_e5),
        now: Duration::ZERO,
        done: 0,
        open_faults: plan.faults.len(),
        prompt_tokens: 0,
        samples: Vec::new(),
    };
    sim.run()?;
    let cached = sim.nodes.iter().map(|n| n.engine.stats().cached_tokens).sum();
    Ok(FaultRun {
        run: ClusterRun {
            requests: sim.outcomes,
            samples: sim.samples,
            cached_tokens: cached,
            prompt_tokens: sim.prompt_tokens,
            makespan: sim.now,
            tiers: TierCounts::default(),
        },
        counts: sim.counts,
    })
}

impl Sim<'_> {
    fn push(&mut self, at: Duration, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, e, self.seq)));
    }

    fn violation(&self, what: String) -> Violation {
        Violation { at: self.now, what }
    }

    fn quiet(&self) -> bool {
        self.done == self.trace.len() && self.open_faults == 0
    }

    fn run(&mut self) -> Result<(), Violation> {
        for (i, r) in self.trace.iter().enumerate() {
            self.push(r.arrival.div_f64(self.config.speed), Event::Arrival(i));
        }
        for (k, f) in self.plan.faults.iter().enumerate() {
            self.push(f.at, Event::FaultStart(k));
        }
        self.push(Duration::ZERO, Event::Sample);
        self.push(self.faults.heartbeat, Event::Heartbeat);
        while let Some(Reverse((at, event, _))) = self.queue.pop() {
            self.now = at;
            match event {
                Event::Arrival(i) => self.arrive(i)?,
                Event::StepDone { worker, incarnation } => self.step_done(worker, incarnation)?,
                Event::Deliver(k) => {
                    let d = self.deliveries.remove(&k).expect("each delivery once");
                    self.deliver(d)?;
                }
                Event::FaultStart(k) => self.fault_start(k)?,
                Event::FaultEnd(k) => self.fault_end(k)?,
                Event::LeaseExpired { worker, silence } => self.lease_expired(worker, silence)?,
                Event::Heartbeat => {
                    for w in 0..self.nodes.len() {
                        let n = &self.nodes[w];
                        if n.up {
                            let kv = KvBatch::Heartbeat { last_event_id: n.last_event_id };
                            self.send(Delivery {
                                worker: w,
                                incarnation: n.incarnation,
                                outputs: Vec::new(),
                                kv: Some(kv),
                            });
                        }
                    }
                    if !self.quiet() {
                        self.push(self.now + self.faults.heartbeat, Event::Heartbeat);
                    }
                }
                Event::Sample => {
                    let cached = self.nodes.iter().map(|n| n.engine.stats().cached_tokens).sum();
                    let load = self.nodes.iter().map(|n| n.engine.running() + n.engine.waiting()).collect();
                    self.samples.push(Sample {
                        at: self.now,
                        cached_tokens: cached,
                        prompt_tokens: self.prompt_tokens,
                        load,
                    });
                    if !self.quiet() {
                        self.push(self.now + SAMPLE_EVERY, Event::Sample);
                    }
                }
            }
        }
        self.finish()
    }

    fn arrive(&mut self, i: usize) -> Result<(), Violation> {
        let r = &self.trace[i];
        let prompt = synthesize_prompt(r, i, self.config.block_size, FIRST_TOKEN, TOKEN_SPAN);
        self.prompt_tokens += prompt.len() as u64;
        self.outcomes[i] = RequestOutcome { arrival: self.now, prompt_tokens: r.input_tokens, ..Default::default() };
        debug_assert_eq!(self.requests.len(), i, "arrivals come in trace order");
        self.requests.push(Request {
            expected: r.output_tokens.max(1),
            prompt,
            delivered: Vec::new(),
            attempt: 0,
            worker: 0,
            migrations: 0,
            done: false,
            placements: Vec::new(),
            unsent: false,
        });
        self.place(i)
    }

    /// Place request `i` (again): its prompt plus what it streamed so far, on a live worker.
    fn place(&mut self, i: usize) -> Result<(), Violation> {
        let candidates: Vec<usize> = (0..self.nodes.len()).filter(|&w| !self.nodes[w].dead).collect();
        if candidates.is_empty() {
            return self.end(i, false);
        }
        let req = &self.requests[i];
        let mut tokens = req.prompt.clone();
        tokens.extend(&req.delivered);
        let hashes = self.hasher.sequence_hashes(&tokens);
        let id = engine_id(i, req.attempt);
        let w = self.placer.place(&id, &hashes, &candidates, self.now).map_or(candidates[0], |d| d.chosen().worker);
        let req = &mut self.requests[i];
        req.worker = w;
        req.placements.push((w, req.attempt));
        if req.attempt == 0 {
            self.outcomes[i].worker = w;
        }
        self.submit(i)
    }

    /// Move request `i` off a failed worker, or fail it when it has moved too often.
    fn migrate(&mut self, i: usize) -> Result<(), Violation> {
        let req = &mut self.requests[i];
        if req.done {
            return Ok(());
        }
        self.placer.finished(&engine_id(i, req.attempt));
        if req.delivered.len() as u32 == req.expected {
            // Every token arrived; only the ending was lost with the worker.
            return self.end(i, true);
        }
        if req.migrations >= self.faults.migrations {
            return self.end(i, false);
        }
        req.migrations += 1;
        req.attempt += 1;
        self.counts.migrated += 1;
        self.place(i)
    }

    /// Request `i` ends: complete (every token delivered) or failed with an error.
    fn end(&mut self, i: usize, complete: bool) -> Result<(), Violation> {
        let req = &mut self.requests[i];
        if req.done {
            self.counts.duplicated += 1;
            return Err(self.violation(format!("request {i} ended twice")));
        }
        req.done = true;
        self.done += 1;
        self.placer.finished(&engine_id(i, req.attempt));
        if complete {
            if req.delivered.len() as u32 != req.expected {
                let (got, want) = (req.delivered.len(), req.expected);
                return Err(self.violation(format!("request {i} finished with {got} of {want} tokens")));
            }
            self.outcomes[i].finished = Some(self.now);
            self.outcomes[i].generated = req.expected;
        } else {
            self.counts.failed += 1;
            self.outcomes[i].rejected = true;
        }
        Ok(())
    }

    /// Hand request `i`'s current placement to its worker (when the worker can hear it).
    fn submit(&mut self, i: usize) -> Result<(), Violation> {
        let req = &mut self.requests[i];
        let w = req.worker;
        let node = &mut self.nodes[w];
        if !node.up || node.cut {
            // Lost on the way (a dead node) or held up (a cut one): the lease or the heal decides.
            req.unsent = true;
            return Ok(());
        }
        req.unsent = false;
        let mut tokens = req.prompt.clone();
        tokens.extend(&req.delivered);
        let remaining = req.expected - req.delivered.len() as u32;
        let sampling = SamplingParams { max_tokens: remaining, ignore_eos: true, ..Default::default() };
        let id = engine_id(i, req.attempt);
        if node.engine.submit(GenerateRequest { id, tag: None, prompt_tokens: tokens, sampling }).is_some() {
            return self.end(i, false);
        }
        if !node.busy {
            self.start_step(w);
        }
        Ok(())
    }

    fn start_step(&mut self, w: usize) {
        let node = &mut self.nodes[w];
        let outputs = node.engine.step().expect("the simulated executor does not fail");
        let took = node.clock.last_step().mul_f64(node.slow);
        let records: Vec<KvEventRecord> = node.engine.take_kv_events();
        if outputs.is_empty() && records.is_empty() && took.is_zero() && node.engine.running() == 0 {
            return;
        }
        node.busy = true;
        let kv = (!records.is_empty()).then_some(KvBatch::Events(records));
        // The step's outputs leave the node when it ends.
        node.pending = Some(Delivery { worker: w, incarnation: node.incarnation, outputs, kv });
        let at = self.now + took.max(Duration::from_micros(1));
        let incarnation = node.incarnation;
        self.push(at, Event::StepDone { worker: w, incarnation });
    }

    fn step_done(&mut self, w: usize, incarnation: u64) -> Result<(), Violation> {
        let node = &mut self.nodes[w];
        if node.incarnation != incarnation {
            return Ok(()); // a step of an engine that has since crashed
        }
        node.busy = false;
        let pool = node.engine.stats().pool;
        if pool.total != self.config.blocks_per_worker || pool.active + pool.inactive + pool.free != pool.total {
            return Err(self.violation(format!("worker {w}'s pool is off budget: {pool:?}")));
        }
        if let Some(d) = node.pending.take() {
            // Heartbeats name the last event sent, never one still inside a running step.
            if let Some(KvBatch::Events(records)) = &d.kv {
                node.last_event_id = records.last().map_or(node.last_event_id, |r| r.id);
            }
            self.send(d);
        }
        let node = &self.nodes[w];
        if node.up && node.engine.has_work() {
            self.start_step(w);
        }
        Ok(())
    }

    /// A node's message leaves for the gateway and router: held while it is cut off, late on a
    /// slow link, always in order.
    fn send(&mut self, d: Delivery) {
        let node = &mut self.nodes[d.worker];
        if node.cut {
            node.held.push(d);
            return;
        }
        let at = (self.now + node.delay).max(node.last_delivery);
        node.last_delivery = at;
        self.seq += 1;
        let key = self.seq;
        self.deliveries.insert(key, d);
        self.push(at, Event::Deliver(key));
    }

    fn deliver(&mut self, d: Delivery) -> Result<(), Violation> {
        let w = d.worker;
        // Publications of a node's earlier life died with its session.
        let current = self.nodes[w].incarnation == d.incarnation && !self.nodes[w].dead;
        if let Some(kv) = d.kv.filter(|_| current) {
            let loss = self.nodes[w].loss;
            if matches!(kv, KvBatch::Events(_)) && loss > 0.0 && self.rng.random::<f64>() < loss {
                self.counts.kv_batches_lost += 1;
            } else if self.placer.receive(&w, d.incarnation, &kv, self.now).needs_dump {
                self.dump(w);
            }
        }
        for (id, ev) in d.outputs {
            self.output(w, id, ev)?;
        }
        Ok(())
    }

    /// The router asked `w` for its whole state.
    fn dump(&mut self, w: usize) {
        let node = &self.nodes[w];
        if node.up && !node.cut && !node.dead {
            let dump = node.engine.kv_dump();
            self.placer.resync(&w, node.incarnation, &dump, self.now);
            self.counts.dumps += 1;
        }
    }

    /// One output of a request reaches the gateway.
    fn output(&mut self, w: usize, id: RequestId, ev: StreamEvent) -> Result<(), Violation> {
        let (i, attempt) = parse_id(&id);
        let req = &self.requests[i];
        let current = !req.done && req.attempt == attempt && req.worker == w;
        if !current && !self.faults.deliver_stale {
            self.counts.stale_discarded += 1;
            let node = &mut self.nodes[w];
            if node.up && !node.cut {
                node.engine.cancel(&id);
            }
            return Ok(());
        }
        match ev {
            StreamEvent::Delta { ids, .. } => {
                let req = &mut self.requests[i];
                if req.done {
                    self.counts.duplicated += ids.len() as u64;
                    return Err(self.violation(format!("request {i} got tokens after it ended")));
                }
                req.delivered.extend(ids);
                let (got, want) = (req.delivered.len() as u32, req.expected);
                if got > 0 && self.outcomes[i].first_token.is_none() {
                    self.outcomes[i].first_token = Some(self.now);
                    self.placer.first_token(&id);
                }
                if got > want {
                    self.counts.duplicated += u64::from(got - want);
                    return Err(self.violation(format!("request {i} got {got} tokens of {want}")));
                }
                Ok(())
            }
            StreamEvent::Finished { .. } => self.end(i, true),
            StreamEvent::Failed(_) => self.migrate(i),
        }
    }

    /// A node falls silent: the lease runs from now.
    fn silent(&mut self, w: usize) {
        self.nodes[w].silence += 1;
        let silence = self.nodes[w].silence;
        self.push(self.now + self.faults.lease, Event::LeaseExpired { worker: w, silence });
    }

    /// A fresh engine on `w` (a restart after a crash): empty pool, a new life.
    fn restart(&mut self, w: usize) {
        let (engine, clock) = simulated_engine(self.config, &self.tokenizer);
        let node = &mut self.nodes[w];
        node.engine = engine;
        node.clock = clock;
        node.incarnation += 1;
        node.busy = false;
        node.pending = None;
        node.last_event_id = 0;
        node.held.clear();
    }

    /// Every live request placed on `w`, to migrate.
    fn placed_on(&self, w: usize) -> Vec<usize> {
        (0..self.requests.len()).filter(|&i| !self.requests[i].done && self.requests[i].worker == w).collect()
    }

    fn fault_start(&mut self, k: usize) -> Result<(), Violation> {
        self.counts.faults += 1;
        let f = self.plan.faults[k].clone();
        let (w, end) = (f.worker, self.now + f.fault.duration());
        match f.fault {
            Fault::Crash => {
                self.open_faults -= 1;
                if !self.nodes[w].up {
                    return Ok(());
                }
                // The worker actor fails its requests as the engine dies; the supervisor
                // restarts it at once.
                self.restart(w);
                for i in self.placed_on(w) {
                    self.migrate(i)?;
                }
                return Ok(());
            }
            Fault::Node { .. } => {
                let node = &mut self.nodes[w];
                if node.up {
                    node.up = false;
                    self.silent(w);
                }
            }
            Fault::Partition { .. } => {
                if !self.nodes[w].cut {
                    self.nodes[w].cut = true;
                    self.silent(w);
                }
            }
            Fault::SlowLink { delay, .. } => self.nodes[w].delay = delay,
            Fault::SlowWorker { factor, .. } => self.nodes[w].slow = factor,
            Fault::LoseEvents { probability, .. } => self.nodes[w].loss = probability,
        }
        self.push(end, Event::FaultEnd(k));
        Ok(())
    }

    fn fault_end(&mut self, k: usize) -> Result<(), Violation> {
        self.open_faults -= 1;
        let f = self.plan.faults[k].clone();
        let w = f.worker;
        match f.fault {
            Fault::Crash => {}
            Fault::Node { .. } => {
                if self.nodes[w].up {
                    return Ok(());
                }
                // The node restarts empty and rejoins; whatever it held is gone, so its requests
                // move now if the lease has not moved them already.
                self.restart(w);
                let node = &mut self.nodes[w];
                node.up = true;
                node.dead = false;
                node.silence += 1;
                for i in self.placed_on(w) {
                    self.migrate(i)?;
                }
            }
            Fault::Partition { .. } => {
                let node = &mut self.nodes[w];
                if !node.cut {
                    return Ok(());
                }
                node.cut = false;
                node.silence += 1;
                if node.dead {
                    // Declared dead meanwhile: it rejoins with a fresh session; its copies of
                    // requests that moved are stale and cancelled.
                    node.dead = false;
                    node.held.clear();
                    for i in 0..self.requests.len() {
                        let current = (self.requests[i].worker, self.requests[i].attempt);
                        for &(pw, a) in &self.requests[i].placements {
                            if pw == w && (pw, a) != current {
                                self.nodes[w].engine.cancel(&engine_id(i, a));
                            }
                        }
                    }
                } else {
                    // Healed within the lease: what it sent arrives late, what it was sent too.
                    for d in std::mem::take(&mut node.held) {
                        self.send(d);
                    }
                    for i in self.placed_on(w) {
                        if self.requests[i].unsent {
                            self.submit(i)?;
                        }
                    }
                }
                if !self.nodes[w].busy && self.nodes[w].engine.has_work() {
                    self.start_step(w);
                }
            }
            Fault::SlowLink { .. } => self.nodes[w].delay = Duration::ZERO,
            Fault::SlowWorker { .. } => self.nodes[w].slow = 1.0,
            Fault::LoseEvents { .. } => self.nodes[w].loss = 0.0,
        }
        Ok(())
    }

    /// The lease of a silent node ran out: it is dead to the router and gateway, and its
    /// requests move.
    fn lease_expired(&mut self, w: usize, silence: u64) -> Result<(), Violation> {
        let node = &mut self.nodes[w];
        if node.silence != silence || (node.up && !node.cut) || node.dead {
            return Ok(());
        }
        node.dead = true;
        node.held.clear();
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&v| !self.nodes[v].dead).collect();
        self.placer.retain(&live);
        for i in self.placed_on(w) {
            self.migrate(i)?;
        }
        Ok(())
    }

    /// End of the run: every request ended; after a last heartbeat round (and the dumps it asks
    /// for), the router's index holds exactly each pool's blocks.
    fn finish(&mut self) -> Result<(), Violation> {
        let open: Vec<usize> = (0..self.requests.len()).filter(|&i| !self.requests[i].done).collect();
        if !open.is_empty() || self.requests.len() != self.trace.len() {
            self.counts.lost = (open.len() + self.trace.len() - self.requests.len()) as u64;
            return Err(self.violation(format!(
                "{} requests never ended: {:?}",
                self.counts.lost,
                &open[..open.len().min(8)]
            )));
        }
        for w in 0..self.nodes.len() {
            let n = &self.nodes[w];
            if n.dead || !n.up || n.cut {
                return Err(self.violation(format!("worker {w} is still out after every fault ended")));
            }
            let beat = KvBatch::Heartbeat { last_event_id: n.last_event_id };
            if self.placer.receive(&w, n.incarnation, &beat, self.now).needs_dump {
                self.dump(w);
            }
            let pool: HashSet<u64> = self.nodes[w].engine.kv_dump().blocks.iter().map(|&(_, h)| h).collect();
            let index = self.placer.index().held(&w, Tier::Device);
            if pool != index {
                let (missing, extra) = (pool.difference(&index).count(), index.difference(&pool).count());
                return Err(self.violation(format!(
                    "the router's index of worker {w} did not converge: {missing} blocks missing, {extra} extra"
                )));
            }
        }
        Ok(())
    }
}
