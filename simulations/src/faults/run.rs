//! The cluster run under a fault plan. Each worker is its own node: the real `Engine` over a
//! `SimulatedExecutor`; the router is the real `Placer` (through `Placer::route`, with `avoid`),
//! fed KV event batches, heartbeats and dumps as the node's link delivers them; each request is
//! the gateway's own `Lifecycle`, pumped here as the gateway's driver pumps it: it retries before
//! the first token and migrates after it (prompt plus tokens so far, fewer to generate) when its
//! worker fails: at once for an engine crash, after the lease for a silent node, after the
//! product's pauses. Outputs of a request's earlier placements are dropped and cancelled by the
//! lifecycle's stale rule; a healed node's stale copies are cancelled when it rejoins.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gpu::engine::Engine;
use gpu::executor::{StepClock, TestTokenizer};
use policy::lifecycle::{Lifecycle, LifecycleConfig, Note, Output};
use policy::router::index::Tier;
use policy::router::placer::{Placer, PlacerConfig};
use policy::router::{DisaggConfig, Eligible};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vocab::blocks::BlockHasher;
use vocab::config::WorkerRole;
use vocab::ids::RequestId;
use vocab::kv::{KvBatch, KvEventRecord};
use vocab::request::{Admission, GenerateRequest, SamplingParams, StreamEvent};

use super::plan::{Fault, FaultPlan};
use crate::cluster::{
    ClusterConfig, ClusterRun, FIRST_TOKEN, RequestOutcome, SAMPLE_EVERY, Sample, TOKEN_SPAN, TierCounts,
    simulated_engine,
};
use crate::queue::{EventQueue, Simulation};
use crate::trace::{TraceRequest, synthesize_prompt};

/// The gateway's and cluster's settings that faults exercise.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// A node silent this long is declared dead (`cluster.lease_timeout`).
    pub lease: Duration,
    /// Placements again after a failure before the first token (`gateway.retries`).
    pub retries: u32,
    /// Moves of one request after its first token before it fails (`gateway.migrations`).
    pub migrations: u32,
    /// Heartbeat period of each node's KV publisher.
    pub heartbeat: Duration,
    /// Test knob: deliver outputs of a request's earlier placements (a broken gateway), to show
    /// that the invariants catch it.
    pub(crate) deliver_stale: bool,
}

impl FaultConfig {
    /// A lease and the gateway's limits, with a heartbeat of a third of the lease.
    pub fn new(lease: Duration, retries: u32, migrations: u32) -> Self {
        Self { lease, retries, migrations, heartbeat: lease / 3, deliver_stale: false }
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        // The product's own defaults (`cluster.lease_timeout`, `gateway.retries`, `gateway.migrations`).
        let gateway = vocab::config::GatewaySection::default();
        let lease = vocab::config::ClusterSection::default_lease_timeout().get();
        Self::new(lease, gateway.retries, gateway.migrations)
    }
}

/// What the faults did, over the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Faults of the plan that took effect.
    pub faults: u64,
    /// Re-placements of a request whose worker failed (retries before the first token and
    /// migrations after it).
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
    StepDone {
        worker: usize,
        incarnation: u64,
    },
    Deliver(u64),
    FaultStart(usize),
    FaultEnd(usize),
    LeaseExpired {
        worker: usize,
        silence: u64,
    },
    /// A request's lifecycle asked to be woken (a pause before placing again).
    Timer(usize),
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

/// One client request: the gateway's lifecycle, and what the client received.
struct Request {
    life: Lifecycle<usize>,
    expected: u32,
    /// Token ids the client received, over every attempt.
    received: Vec<u32>,
    /// The client was told the end (finished or failed).
    ended: bool,
    /// Every (worker, attempt) it was placed as.
    placements: Vec<(usize, u32)>,
    /// The current submission has not reached its worker (down or cut off when submitted).
    unsent: bool,
    /// The wake-up already queued for the lifecycle.
    timer: Option<Duration>,
}

fn engine_id(i: usize, attempt: u32) -> RequestId {
    RequestId(format!("{i}.{attempt}"))
}

fn parse_id(id: &RequestId) -> (usize, u32) {
    let (i, a) = id.0.split_once('.').expect("ids are index.attempt");
    (i.parse().expect("index"), a.parse().expect("attempt"))
}

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
    queue: EventQueue<Event>,
    /// Keys of deliveries on their way.
    next_delivery: u64,
    deliveries: HashMap<u64, Delivery>,
    rng: StdRng,
    now: Duration,
    done: usize,
    lifecycle: LifecycleConfig,
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
        queue: EventQueue::new(),
        next_delivery: 0,
        deliveries: HashMap::new(),
        rng: StdRng::seed_from_u64(config.seed ^ 0x10_57_e7_e5),
        now: Duration::ZERO,
        done: 0,
        lifecycle: LifecycleConfig::new(faults.retries, faults.migrations),
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

impl Simulation for Sim<'_> {
    type Event = Event;
    type Error = Violation;

    fn queue(&mut self) -> &mut EventQueue<Event> {
        &mut self.queue
    }

    fn step(&mut self, at: Duration, event: Event) -> Result<(), Violation> {
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
            Event::Timer(i) => {
                self.requests[i].timer = None;
                self.requests[i].life.handle_timeout(self.now);
                self.pump(i)?;
            }
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
        Ok(())
    }
}

impl Sim<'_> {
    fn push(&mut self, at: Duration, e: Event) {
        self.queue.push(at, e);
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
        self.drive()?;
        self.finish()
    }

    fn arrive(&mut self, i: usize) -> Result<(), Violation> {
        let r = &self.trace[i];
        let prompt = synthesize_prompt(r, i, self.config.block_size, FIRST_TOKEN, TOKEN_SPAN);
        self.prompt_tokens += prompt.len() as u64;
        self.outcomes[i] = RequestOutcome { arrival: self.now, prompt_tokens: r.input_tokens, ..Default::default() };
        debug_assert_eq!(self.requests.len(), i, "arrivals come in trace order");
        let expected = r.output_tokens.max(1);
        let sampling = SamplingParams { max_tokens: expected, ignore_eos: true, ..Default::default() };
        let request = GenerateRequest { id: engine_id(i, 0), tag: None, trace: None, prompt_tokens: prompt, sampling };
        self.requests.push(Request {
            life: Lifecycle::new(request, self.lifecycle, self.now),
            expected,
            received: Vec::new(),
            ended: false,
            placements: Vec::new(),
            unsent: false,
            timer: None,
        });
        self.pump(i)
    }

    /// Carry out what request `i`'s lifecycle says, as the gateway's driver does.
    fn pump(&mut self, i: usize) -> Result<(), Violation> {
        while let Some(output) = self.requests[i].life.poll() {
            match output {
                Output::Place { avoid } => {
                    let eligible: Vec<Eligible<usize>> = (0..self.nodes.len())
                        .filter(|&w| !self.nodes[w].dead)
                        .map(|worker| Eligible { worker, role: WorkerRole::Aggregated })
                        .collect();
                    let req = &self.requests[i];
                    let hashes = self.hasher.sequence_hashes(&req.life.request().prompt_tokens);
                    let id = engine_id(i, req.life.attempt());
                    let disagg = DisaggConfig { min_blocks: u32::MAX, busy_blocks: 0 };
                    let placed = self.placer.route(&id, &hashes, &eligible, &avoid, disagg, self.now);
                    let worker = placed.map(|r| *r.worker());
                    if let Some(w) = worker {
                        let attempt = req.life.attempt();
                        self.requests[i].placements.push((w, attempt));
                        if attempt == 0 {
                            self.outcomes[i].worker = w;
                        }
                    }
                    self.requests[i].life.handle_placed(self.now, worker);
                }
                Output::Submit { .. } => self.submit(i)?,
                Output::FirstToken { attempt } => self.placer.first_token(&engine_id(i, attempt)),
                Output::Deliver(StreamEvent::Delta { ids, .. }) => self.received(i, &ids)?,
                Output::Deliver(_) => self.end(i, true)?,
                Output::Cancel { worker, attempt } => {
                    let node = &mut self.nodes[worker];
                    if node.up && !node.cut {
                        node.engine.cancel(&engine_id(i, attempt));
                    }
                }
                Output::Ended { attempt } => self.placer.finished(&engine_id(i, attempt)),
                Output::Fail(_) => self.end(i, false)?,
                Output::Note(Note::Retry | Note::Migration { .. }) => self.counts.migrated += 1,
                Output::Note(Note::Stale) => self.counts.stale_discarded += 1,
                Output::Note(_) | Output::Admitted { .. } => {}
                Output::Done => self.done += 1,
            }
        }
        let req = &mut self.requests[i];
        if let Some(at) = req.life.poll_timeout()
            && req.timer != Some(at)
        {
            req.timer = Some(at);
            self.push(at, Event::Timer(i));
        }
        Ok(())
    }

    /// Tokens reach the client of request `i`.
    fn received(&mut self, i: usize, ids: &[u32]) -> Result<(), Violation> {
        let req = &mut self.requests[i];
        if req.ended {
            self.counts.duplicated += ids.len() as u64;
            return Err(self.violation(format!("request {i} got tokens after it ended")));
        }
        req.received.extend_from_slice(ids);
        let (got, want) = (req.received.len() as u32, req.expected);
        if got > 0 && self.outcomes[i].first_token.is_none() {
            self.outcomes[i].first_token = Some(self.now);
        }
        if got > want {
            self.counts.duplicated += u64::from(got - want);
            return Err(self.violation(format!("request {i} got {got} tokens of {want}")));
        }
        Ok(())
    }

    /// Request `i`'s client is told the end: complete (every token delivered) or an error.
    fn end(&mut self, i: usize, complete: bool) -> Result<(), Violation> {
        let req = &mut self.requests[i];
        if req.ended {
            self.counts.duplicated += 1;
            return Err(self.violation(format!("request {i} ended twice")));
        }
        req.ended = true;
        if complete {
            if req.received.len() as u32 != req.expected {
                let (got, want) = (req.received.len(), req.expected);
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

    /// Hand request `i`'s current attempt to its worker (when the worker can hear it).
    fn submit(&mut self, i: usize) -> Result<(), Violation> {
        let req = &mut self.requests[i];
        let Some(&w) = req.life.worker() else { return Ok(()) };
        let node = &mut self.nodes[w];
        if !node.up || node.cut {
            // Lost on the way (a dead node) or held up (a cut one): the lease or the heal decides.
            req.unsent = true;
            return Ok(());
        }
        req.unsent = false;
        let mut request = req.life.request().clone();
        request.id = engine_id(i, req.life.attempt());
        let admission = match node.engine.submit(request) {
            Some(refused) => Admission::Rejected(format!("{refused:?}")),
            None => Admission::Accepted,
        };
        req.life.handle_admission(self.now, admission);
        if !self.nodes[w].busy {
            self.start_step(w);
        }
        self.pump(i)
    }

    /// Request `i`'s worker `w` failed: the lifecycle retries or migrates it.
    fn worker_failed(&mut self, i: usize, w: usize, why: &str) -> Result<(), Violation> {
        self.requests[i].life.handle_worker_failed(self.now, &w, why);
        self.pump(i)
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
        self.next_delivery += 1;
        let key = self.next_delivery;
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
        let req = &mut self.requests[i];
        let current = req.life.running() == Some((&w, attempt));
        if !current && self.faults.deliver_stale {
            // A broken gateway: the stale output goes to the client as it is.
            return match ev {
                StreamEvent::Delta { ids, .. } => self.received(i, &ids),
                StreamEvent::Finished { .. } => self.end(i, true),
                StreamEvent::Scored { .. } | StreamEvent::Failed(_) => Ok(()),
            };
        }
        req.life.handle_event(self.now, &w, attempt, ev);
        self.pump(i)
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

    /// Every live request whose current attempt is on `w`.
    fn placed_on(&self, w: usize) -> Vec<usize> {
        (0..self.requests.len()).filter(|&i| self.requests[i].life.worker() == Some(&w)).collect()
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
                    self.worker_failed(i, w, "worker failed: the engine crashed")?;
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
                    self.worker_failed(i, w, "the worker does not know the request (its node restarted)")?;
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
                        let life = &self.requests[i].life;
                        let current = life.worker().map(|&cw| (cw, life.attempt()));
                        for &(pw, a) in &self.requests[i].placements {
                            if pw == w && Some((pw, a)) != current {
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
            self.worker_failed(i, w, &format!("node {w} missed its lease"))?;
        }
        Ok(())
    }

    /// End of the run: every request ended; after a last heartbeat round (and the dumps it asks
    /// for), the router's index holds exactly each pool's blocks.
    fn finish(&mut self) -> Result<(), Violation> {
        let open: Vec<usize> = (0..self.requests.len()).filter(|&i| !self.requests[i].life.is_done()).collect();
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
