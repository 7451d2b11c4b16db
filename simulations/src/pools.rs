//! A disaggregated cluster in virtual time: prefill workers compute prompts (the first token comes
//! from them), the blocks cross to a decode worker (latency plus size over bandwidth), which
//! commits them to its pool and generates the rest. The pools are sized either statically or by
//! the planner core (`policy::planner`), which sees each interval's arrivals, tokens, TTFT, ITL
//! and queues, and moved by the product's actuation (`policy::planner::actuate`: which worker
//! flips, starts or stops); a worker that changes role or stops first drains (no new work,
//! finishes what it has), and a stopped device starts again after a delay. Requests are placed by
//! the router's own `Placer::route` (KV-aware over the workers' KV events, with conditional
//! disaggregation), so the decode worker is chosen when the request arrives, as in the product.
//! Every worker is the real engine and block pool over the timing model. Reports goodput (requests within both SLOs) and
//! device-hours (time devices were on, draining and starting included).

use std::sync::Arc;
use std::time::Duration;

use gpu::engine::Engine;
use gpu::executor::{StepClock, TestTokenizer};
use policy::planner::actuation::heading_pools;
use policy::planner::{Action, Interval, Member, MemberState, Planner, PlannerConfig, Pools, Slo, actuate};
use policy::router::{DisaggConfig, DisaggOutcome, Eligible, Placer, PlacerConfig};
use serde::Serialize;
use vocab::blocks::BlockHasher;
use vocab::config::WorkerRole;
use vocab::ids::RequestId;
use vocab::kv::KvBatch;
use vocab::request::{GenerateRequest, SamplingParams, StreamEvent};

use crate::cluster::{ClusterConfig, FIRST_TOKEN, TOKEN_SPAN, simulated_engine};
use crate::queue::{EventQueue, Simulation};
use crate::trace::{TraceRequest, synthesize_prompt};

/// How the pools are sized.
#[derive(Clone, Debug)]
pub enum Sizing {
    /// Fixed prefill and decode pools for the whole run.
    Static(Pools),
    /// The planner, starting from `initial`, every `interval`.
    Planner { config: PlannerConfig, initial: Pools, interval: Duration },
}

#[derive(Clone, Debug)]
pub struct PoolsConfig {
    pub cluster: ClusterConfig,
    pub slo: Slo,
    pub sizing: Sizing,
    /// Bytes of one KV block and the link between the pools.
    pub block_bytes: u64,
    pub link_bytes_per_s: f64,
    pub link_latency: Duration,
    /// How long a stopped device takes to serve again (loading the model).
    pub startup: Duration,
    /// The router's conditional disaggregation (`router.disagg_min_blocks`,
    /// `router.prefill_busy_blocks`): a prompt is prefilled on its decode worker when fewer of
    /// its blocks than the first are uncached there, or when the least-loaded prefill worker
    /// already has more than the second queued. The planner changes the first as it runs.
    pub disagg_min_blocks: u32,
    pub prefill_busy_blocks: u64,
    /// A disaggregation threshold set from a time on, in order (static pools only): a prompt
    /// arriving at or after an entry's time is placed by that entry's threshold.
    pub disagg_schedule: Vec<(Duration, u32)>,
}

/// How one request fared.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RequestOutcome {
    pub arrival: Duration,
    /// None: it did not finish.
    pub ttft: Option<Duration>,
    /// Mean time between its tokens after the first.
    pub mean_itl: Option<Duration>,
    pub within_slo: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PoolsReport {
    pub requests: usize,
    pub completed: usize,
    /// Requests within both SLOs (TTFT, and mean ITL over their tokens after the first).
    pub goodput: usize,
    pub goodput_ratio: f64,
    pub device_hours: f64,
    pub ttft_p90_ms: f64,
    pub itl_p90_ms: f64,
    pub makespan_s: f64,
    /// Prompts prefilled on their decode worker (conditional disaggregation).
    pub local_prefills: usize,
    /// Role changes and stops/starts the planner made.
    pub flips: u64,
    pub starts: u64,
    pub stops: u64,
    /// The planner's decisions that changed something, with their reasons.
    pub decisions: Vec<String>,
    /// Each request, in trace order (written as `requests.csv`, not in the JSON).
    #[serde(skip)]
    pub outcomes: Vec<RequestOutcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Prefill,
    Decode,
    Off,
}

struct Worker {
    engine: Engine,
    clock: StepClock,
    role: Role,
    /// Taking no new work; becomes this when idle.
    draining_to: Option<Role>,
    /// Starting (from Off); serves from this time.
    ready_at: Option<Duration>,
    busy: bool,
    pending: Vec<(RequestId, StreamEvent)>,
    /// Prompts placed here whose blocks are still being prefilled elsewhere: it holds them.
    expecting: usize,
    /// Bumped when it stops (a fresh pool numbers its KV events from 1 again).
    incarnation: u64,
}

impl Worker {
    fn on(&self) -> bool {
        self.role != Role::Off || self.ready_at.is_some()
    }

    /// Takes new work of `role` now.
    fn serves(&self, role: Role, now: Duration) -> bool {
        self.role == role && self.draining_to.is_none() && self.ready_at.is_none_or(|t| t <= now)
    }

    fn load(&self) -> usize {
        self.engine.running() + self.engine.waiting() + self.expecting
    }

    fn holds_work(&self) -> bool {
        self.busy || self.engine.has_work() || self.expecting > 0
    }

    /// As the planner's actuation sees it.
    fn state(&self) -> MemberState {
        match (self.role.worker_role(), self.ready_at, self.draining_to) {
            (Some(role), Some(_), _) => MemberState::Starting(role),
            (_, _, Some(to)) => MemberState::Draining(to.worker_role()),
            (Some(role), None, None) => MemberState::Serving(role),
            (None, ..) => MemberState::Stopped,
        }
    }
}

impl Role {
    fn worker_role(self) -> Option<WorkerRole> {
        match self {
            Role::Prefill => Some(WorkerRole::Prefill),
            Role::Decode => Some(WorkerRole::Decode),
            Role::Off => None,
        }
    }

    fn of(role: WorkerRole) -> Self {
        if role == WorkerRole::Prefill { Role::Prefill } else { Role::Decode }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    StepDone(usize),
    Landed(usize),
    /// A started device serves from now.
    Ready,
    Arrival(usize),
    Plan,
}

#[derive(Clone, Debug, Default)]
struct Request {
    arrival: Duration,
    prompt: Vec<u32>,
    output: u32,
    first_token: Option<Duration>,
    finished: Option<Duration>,
    /// The decode worker its blocks go to, when a prefill worker computes its prompt.
    decode: Option<usize>,
}

struct Sim<'a> {
    c: &'a PoolsConfig,
    workers: Vec<Worker>,
    requests: Vec<Request>,
    queue: EventQueue<Event>,
    /// The planner and its interval (None: static pools).
    planner: Option<(Planner, Duration)>,
    /// The next entry of `c.disagg_schedule` to take effect.
    schedule_next: usize,
    /// TTFTs and ITLs of the intervals already planned.
    all_ttft: Vec<Duration>,
    all_itl: Vec<Duration>,
    hasher: BlockHasher,
    now: Duration,
    on_since: Duration,
    device_secs: f64,
    report: PoolsReport,
    /// The router's placer: KV-aware placement and conditional disaggregation.
    placer: Placer<usize>,
    /// Prompts that arrived while no worker served.
    backlog: std::collections::VecDeque<usize>,
    /// Counts of the interval in progress.
    interval_input: u64,
    interval_output: u64,
    interval_arrivals: u64,
    ttfts: Vec<Duration>,
    itls: Vec<Duration>,
    done: usize,
    /// The router's disaggregation threshold now.
    disagg_min_blocks: u32,
}

/// Run `trace` on the disaggregated cluster of `c`.
pub fn run_pools(c: &PoolsConfig, trace: &[TraceRequest]) -> PoolsReport {
    let tokenizer = Arc::new(TestTokenizer::default());
    let initial = match &c.sizing {
        Sizing::Static(p) => *p,
        Sizing::Planner { initial, .. } => *initial,
    };
    assert!(initial.total() <= c.cluster.workers && initial.prefill > 0 && initial.decode > 0, "initial pools");
    let workers = (0..c.cluster.workers)
        .map(|w| {
            let (engine, clock) = simulated_engine(&c.cluster, &tokenizer);
            let role = if w < initial.prefill {
                Role::Prefill
            } else if w < initial.total() {
                Role::Decode
            } else {
                Role::Off
            };
            Worker {
                engine,
                clock,
                role,
                draining_to: None,
                ready_at: None,
                busy: false,
                pending: Vec::new(),
                expecting: 0,
                incarnation: 0,
            }
        })
        .collect();
    let mut sim = Sim {
        c,
        workers,
        requests: Vec::with_capacity(trace.len()),
        queue: EventQueue::new(),
        planner: None,
        schedule_next: 0,
        all_ttft: Vec::new(),
        all_itl: Vec::new(),
        hasher: BlockHasher::new(c.cluster.block_size),
        now: Duration::ZERO,
        on_since: Duration::ZERO,
        device_secs: 0.0,
        report: PoolsReport { requests: trace.len(), ..Default::default() },
        placer: Placer::new(
            PlacerConfig { policy: c.cluster.policy, cost: c.cluster.cost.clone(), ..PlacerConfig::default() },
            c.cluster.seed,
        ),
        backlog: Default::default(),
        interval_input: 0,
        interval_output: 0,
        interval_arrivals: 0,
        ttfts: Vec::new(),
        itls: Vec::new(),
        done: 0,
        disagg_min_blocks: c.disagg_min_blocks,
    };
    for (i, r) in trace.iter().enumerate() {
        sim.push(r.arrival.div_f64(c.cluster.speed), Event::Arrival(i));
        let prompt = synthesize_prompt(r, i, c.cluster.block_size, FIRST_TOKEN, TOKEN_SPAN);
        sim.requests.push(Request { prompt, output: r.output_tokens.max(1), ..Default::default() });
    }
    sim.planner = match &c.sizing {
        Sizing::Planner { config, interval, .. } => {
            sim.push(*interval, Event::Plan);
            Some((Planner::new(config.clone()), *interval))
        }
        Sizing::Static(_) => None,
    };
    sim.drive().unwrap_or_else(|never: std::convert::Infallible| match never {});
    let mut all_ttft = std::mem::take(&mut sim.all_ttft);
    let mut all_itl = std::mem::take(&mut sim.all_itl);
    all_ttft.append(&mut sim.ttfts);
    all_itl.append(&mut sim.itls);
    sim.account(sim.now);
    let r = &mut sim.report;
    r.completed = sim.requests.iter().filter(|q| q.finished.is_some()).count();
    r.outcomes = sim
        .requests
        .iter()
        .map(|q| {
            let ttft = q.first_token.map(|first| first - q.arrival);
            let mean_itl = q
                .first_token
                .zip(q.finished)
                .map(|(first, end)| if q.output > 1 { (end - first) / (q.output - 1) } else { Duration::ZERO });
            let within_slo = ttft.zip(mean_itl).is_some_and(|(t, i)| t <= c.slo.ttft && i <= c.slo.itl);
            RequestOutcome { arrival: q.arrival, ttft, mean_itl, within_slo }
        })
        .collect();
    r.goodput = r.outcomes.iter().filter(|o| o.within_slo).count();
    r.goodput_ratio = r.goodput as f64 / r.requests.max(1) as f64;
    r.device_hours = sim.device_secs / 3600.0;
    r.ttft_p90_ms = p90(&mut all_ttft).as_secs_f64() * 1000.0;
    r.itl_p90_ms = p90(&mut all_itl).as_secs_f64() * 1000.0;
    r.makespan_s = sim.now.as_secs_f64();
    sim.report
}

fn p90(v: &mut [Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

impl Simulation for Sim<'_> {
    type Event = Event;
    type Error = std::convert::Infallible;

    fn queue(&mut self) -> &mut EventQueue<Event> {
        &mut self.queue
    }

    fn step(&mut self, at: Duration, event: Event) -> Result<(), Self::Error> {
        if event == Event::Plan && self.done == self.requests.len() {
            // The run ended with its last request; a planning tick after it counts no device time.
            return Ok(());
        }
        self.account(at);
        match event {
            Event::Arrival(i) => {
                while let Some(&(from, blocks)) = self.c.disagg_schedule.get(self.schedule_next)
                    && from <= at
                {
                    self.disagg_min_blocks = blocks;
                    self.schedule_next += 1;
                }
                self.requests[i].arrival = at;
                self.interval_arrivals += 1;
                self.interval_input += self.requests[i].prompt.len() as u64;
                self.backlog.push_back(i);
                self.dispatch_prefills();
            }
            Event::StepDone(w) => self.step_done(w),
            Event::Landed(i) => self.land(i),
            Event::Ready => self.dispatch_prefills(),
            Event::Plan => self.plan(at),
        }
        Ok(())
    }
}

impl Sim<'_> {
    /// A planning tick: the planner sees the interval and the actuation moves workers.
    fn plan(&mut self, at: Duration) {
        let Some((mut planner, interval)) = self.planner.take() else { return };
        let seen = self.interval(interval);
        self.all_ttft.append(&mut self.ttfts);
        self.all_itl.append(&mut self.itls);
        let current = heading_pools(&self.members());
        let d = planner.decide(&seen, current);
        if d.disagg_min_blocks != self.disagg_min_blocks {
            self.report.decisions.push(format!(
                "{:.0}s: disaggregation threshold {} -> {} blocks",
                at.as_secs_f64(),
                self.disagg_min_blocks,
                d.disagg_min_blocks
            ));
            self.disagg_min_blocks = d.disagg_min_blocks;
        }
        if d.pools != current {
            self.report.decisions.push(format!(
                "{:.0}s: {:?} -> {:?}: {}",
                at.as_secs_f64(),
                current,
                d.pools,
                d.reason
            ));
            self.resize(d.pools);
        }
        if self.done < self.requests.len() {
            self.push(at + interval, Event::Plan);
        }
        self.planner = Some((planner, interval));
    }

    fn push(&mut self, at: Duration, e: Event) {
        self.queue.push(at, e);
    }

    /// Advance the clock, counting device time.
    fn account(&mut self, at: Duration) {
        let on = self.workers.iter().filter(|w| w.on()).count() as f64;
        self.device_secs += on * (at - self.on_since).as_secs_f64();
        self.on_since = at;
        self.now = at;
        // Devices whose start finished.
        for w in &mut self.workers {
            if w.ready_at.is_some_and(|t| t <= at) {
                w.ready_at = None;
            }
        }
    }

    fn start(&mut self, w: usize) {
        if !self.workers[w].busy && self.workers[w].engine.has_work() {
            let worker = &mut self.workers[w];
            let outputs = worker.engine.step().expect("the simulated executor does not fail");
            let took = worker.clock.last_step();
            let records = worker.engine.take_kv_events();
            let incarnation = worker.incarnation;
            worker.pending.extend(outputs);
            if !records.is_empty() {
                // The router hears the step's KV events (the pools' link to it is not modelled).
                self.placer.receive(&w, incarnation, &KvBatch::Events(records), self.now);
            }
            let worker = &mut self.workers[w];
            worker.busy = true;
            let at = self.now + took.max(Duration::from_micros(1));
            self.push(at, Event::StepDone(w));
        }
    }

    /// The workers the router may place on now, with their roles.
    fn eligible(&self) -> Vec<Eligible<usize>> {
        (0..self.workers.len())
            .filter_map(|w| {
                let worker = &self.workers[w];
                let role = worker.role.worker_role()?;
                worker.serves(worker.role, self.now).then_some(Eligible { worker: w, role })
            })
            .collect()
    }

    /// Place waiting prompts as the router does: a worker for each (KV-aware), and a prefill
    /// worker first where conditional disaggregation says so.
    fn dispatch_prefills(&mut self) {
        let disagg = DisaggConfig { min_blocks: self.disagg_min_blocks, busy_blocks: self.c.prefill_busy_blocks };
        while let Some(&i) = self.backlog.front() {
            let eligible = self.eligible();
            let hashes = self.hasher.sequence_hashes(&self.requests[i].prompt);
            let Some(routed) = self.placer.route(&key(i), &hashes, &eligible, &[], disagg, self.now) else { return };
            self.backlog.pop_front();
            let w = *routed.worker();
            let (target, id, max_tokens) = match routed.prefill {
                Some(p) if routed.disagg == DisaggOutcome::Remote => {
                    self.requests[i].decode = Some(w);
                    self.workers[w].expecting += 1;
                    (p, format!("p{i}"), 1)
                }
                _ => {
                    self.report.local_prefills += 1;
                    (w, format!("l{i}"), self.requests[i].output)
                }
            };
            let r = &self.requests[i];
            let req = GenerateRequest {
                id: RequestId(id),
                tag: None,
                trace: None,
                prompt_tokens: r.prompt.clone(),
                sampling: SamplingParams { max_tokens, ignore_eos: true, ..Default::default() },
            };
            let refused = self.workers[target].engine.submit(req);
            assert!(refused.is_none(), "the simulated engines take every request");
            self.start(target);
        }
    }

    /// The first token of request `i` is out (if it was not already): its prefill is done.
    fn first_token(&mut self, i: usize) {
        if self.requests[i].first_token.is_some() {
            return;
        }
        self.requests[i].first_token = Some(self.now);
        self.ttfts.push(self.now - self.requests[i].arrival);
        self.placer.first_token(&key(i));
    }

    fn step_done(&mut self, w: usize) {
        self.workers[w].busy = false;
        for (id, ev) in std::mem::take(&mut self.workers[w].pending) {
            let (kind, i) = id.0.split_at(1);
            let i: usize = i.parse().expect("ids are p<i>, l<i> or d<i>");
            match (kind, ev) {
                ("p", StreamEvent::Finished { .. }) => {
                    // The first token is out; the blocks cross to a decode worker.
                    self.first_token(i);
                    self.interval_output += 1;
                    let blocks = self.requests[i].prompt.len() / self.c.cluster.block_size;
                    let secs = (blocks as u64 * self.c.block_bytes) as f64 / self.c.link_bytes_per_s.max(1.0);
                    let at = self.now + self.c.link_latency + Duration::from_secs_f64(secs);
                    self.push(at, Event::Landed(i));
                }
                ("l", StreamEvent::Delta { tokens, .. }) => {
                    self.first_token(i);
                    self.interval_output += u64::from(tokens);
                }
                ("d", StreamEvent::Delta { tokens, .. }) => self.interval_output += u64::from(tokens),
                ("d" | "l", StreamEvent::Finished { .. }) => {
                    // (A decode worker's request had its first token from the prefill worker.)
                    self.first_token(i);
                    self.finish(i)
                }
                _ => {}
            }
        }
        self.start(w);
        self.settle(w);
        self.dispatch_prefills();
    }

    fn finish(&mut self, i: usize) {
        let r = &mut self.requests[i];
        r.finished = Some(self.now);
        if r.output > 1 {
            self.itls.push((self.now - r.first_token.expect("after the first token")) / (r.output - 1));
        }
        self.done += 1;
        self.placer.finished(&key(i));
    }

    /// Request `i`'s blocks reached the decode worker chosen when it arrived, which generates
    /// from its second token.
    fn land(&mut self, i: usize) {
        let w = self.requests[i].decode.expect("remote prefills have a decode worker");
        self.workers[w].expecting -= 1;
        if self.requests[i].output <= 1 {
            self.finish(i);
            self.settle(w);
            return;
        }
        let r = &self.requests[i];
        let hashes = self.hasher.reusable_hashes(&r.prompt);
        let mut tokens = r.prompt.clone();
        tokens.push(u32::from(b'a'));
        let req = GenerateRequest {
            id: RequestId(format!("d{i}")),
            tag: None,
            trace: None,
            prompt_tokens: tokens,
            sampling: SamplingParams { max_tokens: r.output - 1, ignore_eos: true, ..Default::default() },
        };
        let engine = &mut self.workers[w].engine;
        if let Some(res) = engine.reserve(&hashes) {
            engine.commit(res, &hashes);
        }
        let refused = engine.submit(req);
        assert!(refused.is_none(), "the simulated engines take every request");
        self.start(w);
    }

    /// A draining worker that has finished everything takes its new role (or stops).
    fn settle(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        if let Some(to) = worker.draining_to
            && !worker.holds_work()
        {
            worker.draining_to = None;
            worker.role = to;
            if to == Role::Off {
                // Stopped: its pool is gone.
                let (engine, clock) = simulated_engine(&self.c.cluster, &Arc::new(TestTokenizer::default()));
                worker.engine = engine;
                worker.clock = clock;
                worker.incarnation += 1;
                let live: Vec<usize> = (0..self.workers.len()).filter(|&v| self.workers[v].on()).collect();
                self.placer.retain(&live);
            }
        }
    }

    /// What one interval saw.
    fn interval(&mut self, length: Duration) -> Interval {
        let p90_of = |v: &[Duration]| {
            let mut v = v.to_vec();
            (!v.is_empty()).then(|| p90(&mut v))
        };
        let seen = Interval {
            length,
            arrivals: self.interval_arrivals,
            input_tokens: self.interval_input,
            output_tokens: self.interval_output,
            ttft_p90: p90_of(&self.ttfts),
            itl_p90: p90_of(&self.itls),
            prefill_queue: self.backlog.len()
                + self.workers.iter().filter(|w| w.role == Role::Prefill).map(|w| w.engine.waiting()).sum::<usize>(),
            prefill_queue_tokens: self.backlog.iter().map(|&i| self.requests[i].prompt.len() as u64).sum(),
            decode_kv_use: self
                .workers
                .iter()
                .filter(|w| w.role == Role::Decode)
                .map(|w| {
                    let p = w.engine.stats().pool;
                    p.active as f64 / p.total.max(1) as f64
                })
                .fold(0.0, f64::max),
            decode_waiting: self
                .workers
                .iter()
                .filter(|w| w.role == Role::Decode)
                .map(|w| w.engine.waiting())
                .sum::<usize>(),
        };
        (self.interval_arrivals, self.interval_input, self.interval_output) = (0, 0, 0);
        seen
    }

    /// The devices as the planner's actuation sees them (every device may stop and start).
    fn members(&self) -> Vec<Member<usize>> {
        let member = |(w, worker): (usize, &Worker)| Member {
            worker: w,
            state: worker.state(),
            load: worker.load(),
            spare: true,
        };
        self.workers.iter().enumerate().map(member).collect()
    }

    /// Move workers towards `want` with the product's actuation: a flip drains the worker into
    /// its new role, a stop drains it to off, a start loads the model for `startup`.
    fn resize(&mut self, want: Pools) {
        let members = self.members();
        for action in actuate(&members, want) {
            match action {
                Action::Flip { worker: w, to } => {
                    if members[w].state == MemberState::Draining(None) {
                        self.report.starts += 1; // kept on instead of stopping
                    } else {
                        self.report.flips += 1;
                    }
                    self.workers[w].draining_to = Some(Role::of(to));
                    self.settle(w);
                }
                Action::Start { worker: w, role } => {
                    let at = self.now + self.c.startup;
                    let worker = &mut self.workers[w];
                    worker.ready_at = Some(at);
                    worker.role = Role::of(role);
                    self.report.starts += 1;
                    self.push(at, Event::Ready);
                }
                Action::Stop { worker: w } => {
                    self.workers[w].draining_to = Some(Role::Off);
                    self.report.stops += 1;
                    self.settle(w);
                }
            }
        }
    }
}

/// The placer's key of request `i`.
fn key(i: usize) -> RequestId {
    RequestId(format!("r{i}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::planner::{Capacity, PlannerMode};
    use policy::router::cost::CostConfig;

    fn config(sizing: Sizing) -> PoolsConfig {
        PoolsConfig {
            cluster: ClusterConfig {
                workers: 4,
                blocks_per_worker: 4000,
                block_size: 16,
                policy: crate::cluster::Policy::LeastLoaded,
                seed: 1,
                speed: 1.0,
                timing: crate::simulate::DEFAULT_TIMING,
                max_batch: 64,
                max_batch_tokens: 4096,
                cost: CostConfig::default(),
                tiers: None,
            },
            slo: Slo { ttft: Duration::from_secs(2), itl: Duration::from_millis(50) },
            sizing,
            block_bytes: 2 << 20,
            link_bytes_per_s: 12e9,
            link_latency: Duration::from_micros(200),
            startup: Duration::from_secs(5),
            disagg_min_blocks: 8,
            prefill_busy_blocks: 1024,
            disagg_schedule: Vec::new(),
        }
    }

    /// A quiet minute, a burst of long prompts, a quiet minute.
    fn trace() -> Vec<TraceRequest> {
        let mut t = Vec::new();
        let mut at = 0.0;
        for phase in [(60.0, 0.5), (30.0, 12.0), (60.0, 0.5)] {
            let end = at + phase.0;
            while at < end {
                t.push(TraceRequest {
                    arrival: Duration::from_secs_f64(at),
                    input_tokens: 1500,
                    output_tokens: 20,
                    hash_ids: Vec::new(),
                });
                at += 1.0 / phase.1;
            }
        }
        t
    }

    #[test]
    fn static_pools_serve_every_request_with_the_first_token_from_prefill() {
        let r = run_pools(&config(Sizing::Static(Pools { prefill: 3, decode: 1 })), &trace());
        assert_eq!(r.completed, r.requests);
        assert!(r.goodput > 0 && r.goodput <= r.completed);
        assert!(r.ttft_p90_ms > 0.0 && r.itl_p90_ms > 0.0 && r.itl_p90_ms < 50.0, "{r:?}");
        // Four devices on for the whole run.
        assert!((r.device_hours - 4.0 * r.makespan_s / 3600.0).abs() < 1e-6, "{r:?}");
        assert_eq!((r.flips, r.starts, r.stops), (0, 0, 0));
        // A smaller prefill pool meets the TTFT SLO less often in the burst.
        let small = run_pools(&config(Sizing::Static(Pools { prefill: 1, decode: 1 })), &trace());
        assert!(small.goodput < r.goodput, "{} vs {}", small.goodput, r.goodput);
    }

    #[test]
    fn conditional_disaggregation_keeps_short_prompts_and_a_busy_pools_prompts_on_decode_workers() {
        // Every fifth prompt is short (4 blocks, under the threshold of 8).
        let mut t = trace();
        for (i, r) in t.iter_mut().enumerate() {
            if i % 5 == 0 {
                r.input_tokens = 64;
            }
        }
        let short = t.iter().filter(|r| r.input_tokens == 64).count();
        let c =
            PoolsConfig { prefill_busy_blocks: u64::MAX, ..config(Sizing::Static(Pools { prefill: 1, decode: 1 })) };
        let r = run_pools(&c, &t);
        assert_eq!(r.completed, r.requests);
        assert_eq!(r.local_prefills, short, "{r:?}");
        // A busy threshold of 200 blocks (two long prompts queued): in the burst, long prompts
        // stay on the decode worker too, and the first tokens come sooner.
        let busy = run_pools(&PoolsConfig { prefill_busy_blocks: 200, ..c }, &t);
        assert_eq!(busy.completed, busy.requests);
        assert!(busy.local_prefills > short + 10, "{busy:?}");
        assert!(busy.ttft_p90_ms < r.ttft_p90_ms, "{busy:?} vs {r:?}");
    }

    #[test]
    fn a_threshold_schedule_holds_from_each_time_and_every_request_has_its_outcome() {
        // Prompts of 93 blocks: remote under a threshold of 8, local under one of 1000, which
        // holds for the arrivals from 60 s (the burst's start) to 90 s (its end).
        let t = trace();
        let c = PoolsConfig {
            prefill_busy_blocks: u64::MAX,
            disagg_schedule: vec![(Duration::ZERO, 8), (Duration::from_secs(60), 1000), (Duration::from_secs(90), 8)],
            ..config(Sizing::Static(Pools { prefill: 1, decode: 1 }))
        };
        let r = run_pools(&c, &t);
        let burst = Duration::from_secs(60)..Duration::from_secs(90);
        let in_burst = t.iter().filter(|q| burst.contains(&q.arrival)).count();
        assert!(in_burst > 300, "{in_burst}");
        assert_eq!(r.local_prefills, in_burst, "{r:?}");
        assert_eq!(r.completed, r.requests);
        assert_eq!(r.outcomes.len(), t.len());
        assert!(r.outcomes.iter().zip(&t).all(|(o, q)| o.arrival == q.arrival && o.ttft.is_some()));
        let within = |o: &RequestOutcome| o.ttft.unwrap() <= c.slo.ttft && o.mean_itl.unwrap() <= c.slo.itl;
        assert!(r.outcomes.iter().all(|o| o.within_slo == within(o)));
        assert_eq!(r.goodput, r.outcomes.iter().filter(|o| o.within_slo).count());
        assert!(r.goodput > 0 && r.goodput < r.requests, "{r:?}");
        // Without the schedule, none is local.
        let plain = run_pools(&PoolsConfig { disagg_schedule: Vec::new(), ..c }, &t);
        assert_eq!(plain.local_prefills, 0);
    }

    #[test]
    fn the_planner_grows_for_the_burst_stays_in_budget_and_replays() {
        let planned = |mode| {
            let capacity = Capacity { prefill_tokens_per_s: 10_000.0, decode_tokens_per_s: 4_000.0 };
            let slo = Slo { ttft: Duration::from_secs(2), itl: Duration::from_millis(50) };
            let mut pc = PlannerConfig::new(slo, mode, 4, capacity);
            pc.shrink_after = 3;
            let sizing = Sizing::Planner {
                config: pc,
                initial: Pools { prefill: 1, decode: 1 },
                interval: Duration::from_secs(5),
            };
            run_pools(&config(sizing), &trace())
        };
        for mode in [PlannerMode::Throughput, PlannerMode::Load] {
            let r = planned(mode);
            assert_eq!(r.completed, r.requests, "{mode:?}");
            if mode == PlannerMode::Load {
                // Load mode grows one step at a time, so prompts queue in the burst: the router's
                // threshold rose (and fell back after).
                let moves: Vec<&String> = r.decisions.iter().filter(|d| d.contains("threshold")).collect();
                assert!(moves.iter().any(|d| d.ends_with("8 -> 16 blocks")), "{:?}", r.decisions);
                assert!(moves.last().is_some_and(|d| d.ends_with("-> 8 blocks")), "{moves:?}");
            }
            assert!(r.starts >= 1, "{mode:?}: the burst started a spare device: {:?}", r.decisions);
            assert!(r.device_hours <= 4.0 * r.makespan_s / 3600.0 + 1e-9, "{mode:?}: within the budget");
            assert!(r.device_hours < 3.9 * r.makespan_s / 3600.0, "{mode:?}: spares off in the quiet minutes");
            assert!(r.decisions.iter().all(|d| d.contains(':')), "decisions carry reasons");
            assert_eq!(planned(mode), r, "{mode:?} replays");
        }
        let static2 = run_pools(&config(Sizing::Static(Pools { prefill: 1, decode: 1 })), &trace());
        let t = planned(PlannerMode::Throughput);
        assert!(t.goodput > static2.goodput, "growing beats staying at 1+1: {t:?} vs {static2:?}");
    }

    #[test]
    fn a_planner_that_changes_nothing_costs_what_the_static_split_costs() {
        // Every device in use and neither pool may shrink; every prompt (93 blocks) stays above
        // any threshold the planner can set (8 x 8): the plan ticks change nothing, and the one
        // after the last request must not be charged.
        let fixed = Pools { prefill: 3, decode: 1 };
        let capacity = Capacity { prefill_tokens_per_s: 10_000.0, decode_tokens_per_s: 4_000.0 };
        let mut pc = PlannerConfig::new(config(Sizing::Static(fixed)).slo, PlannerMode::Throughput, 4, capacity);
        (pc.min_prefill, pc.min_decode) = (3, 1);
        let planned = Sizing::Planner { config: pc, initial: fixed, interval: Duration::from_secs(7) };
        let c = PoolsConfig { prefill_busy_blocks: u64::MAX, ..config(planned) };
        let p = run_pools(&c, &trace());
        let s = run_pools(&PoolsConfig { sizing: Sizing::Static(fixed), ..c }, &trace());
        assert_eq!((p.flips, p.starts, p.stops), (0, 0, 0), "{:?}", p.decisions);
        assert_eq!((p.goodput, p.makespan_s, p.device_hours), (s.goodput, s.makespan_s, s.device_hours));
    }
}
