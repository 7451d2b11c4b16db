//! `RouterActor`: serves placements to gateways from the workers that discovery shows on live
//! nodes, keeps the `Placer` fed with every worker's KV publications (through its `KvListener`),
//! asks a worker for a dump when the index loses track of it, and warns when a worker goes quiet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, call_t};
use runtime::config::{RouterSection, WorkerRole};
use runtime::discovery;
use runtime::ids::{RequestId, WorkerId};
use runtime::kv::{KvPublish, OnboardHint, TierKind, WorkerLoad};
use runtime::node::ClusterView;

use policy::router::index::Tier;
use policy::router::{DisaggConfig, DisaggOutcome, Eligible, Placer, placer_config};

use super::listener::KvListener;
use crate::protocol::{
    ExplainedDecision, Placement, RouterMsg, RouterStatus, TierMsg, WorkerHandle, WorkerMsg, WorkerView,
};

/// How often the router drops gone workers, expires assumptions and checks for silence.
const TICK: Duration = Duration::from_secs(1);
/// Decisions kept for `/debug/router`.
const RECENT_DECISIONS: usize = 32;
/// Longest a worker may take to answer a dump request.
const DUMP_TIMEOUT_MS: u64 = 5_000;

pub struct RouterArgs {
    pub config: RouterSection,
    pub view: Arc<ClusterView>,
}

pub struct RouterActor;

pub struct RouterState {
    placer: Placer<WorkerId>,
    disagg_min_blocks: u32,
    prefill_busy_blocks: u64,
    view: Arc<ClusterView>,
    epoch: Instant,
    silence: Duration,
    /// Workers asked for a dump and not answered yet.
    dumping: HashSet<WorkerId>,
    /// Workers reported silent (warned once per silence).
    silent: HashSet<WorkerId>,
    /// What each worker last said about how full it is.
    loads: HashMap<WorkerId, WorkerLoad>,
    recent: VecDeque<ExplainedDecision>,
    /// Workers passed over because they announce another model than a request's gateway
    /// (warned once each).
    wrong_model: HashSet<WorkerId>,
}

fn worker_key(w: &WorkerId) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(w)
}

impl RouterState {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Live workers and their roles; forgets the others.
    fn live(&mut self) -> Vec<(WorkerId, ActorRef<WorkerMsg>, WorkerRole)> {
        let (roles, draining) = (discovery::roles(), discovery::draining());
        let alive: Vec<_> = discovery::workers().into_iter().filter(|(id, _)| self.view.is_alive(&id.node)).collect();
        // A draining worker keeps its index (its pool still serves what runs there) but gets
        // nothing new.
        let ids: Vec<WorkerId> = alive.iter().map(|(id, _)| id.clone()).collect();
        let live: Vec<_> = alive
            .into_iter()
            .filter(|(_, cell)| !draining.contains(&cell.get_id()))
            .map(|(id, cell)| {
                let role = roles.get(&cell.get_id()).copied().unwrap_or_default();
                (id, ActorRef::<WorkerMsg>::from(cell), role)
            })
            .collect();
        let tiers = discovery::tiers().into_iter().map(|(id, _)| id).filter(|id| self.view.is_alive(&id.node));
        let sources: Vec<WorkerId> = ids.iter().cloned().chain(tiers).collect();
        self.placer.retain(&sources);
        self.silent.retain(|w| ids.contains(w));
        self.loads.retain(|w, _| ids.contains(w));
        metrics::gauge!("armature_router_live_workers").set(ids.len() as f64);
        live
    }

    /// Keep the workers that announce `model`; warn once about each that announces another.
    fn same_model(&mut self, live: &mut Vec<(WorkerId, ActorRef<WorkerMsg>, WorkerRole)>, model: u64) {
        let models = discovery::models();
        live.retain(|(id, cell, _)| {
            let theirs = models.get(&cell.get_id()).copied();
            if theirs == Some(model) {
                return true;
            }
            // No announcement yet (process groups sync one by one): not eligible, not wrong.
            if let Some(theirs) = theirs
                && self.wrong_model.insert(id.clone())
            {
                let (theirs, expected) = (format!("{theirs:016x}"), format!("{model:016x}"));
                tracing::warn!(worker = %id, model = %theirs, %expected, "worker serves another model: not placing on it");
            }
            false
        });
        let ids: Vec<&WorkerId> = live.iter().map(|(id, _, _)| id).collect();
        self.wrong_model.retain(|w| !ids.contains(&w));
        metrics::gauge!("armature_router_wrong_model_workers").set(self.wrong_model.len() as f64);
    }

    fn place(&mut self, request: RequestId, hashes: &[u64], avoid: &[WorkerId], model: u64) -> Option<Placement> {
        let started = Instant::now();
        let mut live = self.live();
        self.same_model(&mut live, model);
        let eligible: Vec<Eligible<WorkerId>> =
            live.iter().map(|(id, _, role)| Eligible { worker: id.clone(), role: *role }).collect();
        let disagg = DisaggConfig { min_blocks: self.disagg_min_blocks, busy_blocks: self.prefill_busy_blocks };
        let now = self.now();
        let routed = self.placer.route(&request, hashes, &eligible, avoid, disagg, now);
        let policy = self.placer.config().policy.name();
        let Some(routed) = routed else {
            metrics::counter!("armature_router_decisions_total", "policy" => policy, "outcome" => "no_worker")
                .increment(1);
            return None;
        };
        if routed.disagg != DisaggOutcome::Aggregated {
            metrics::counter!("armature_router_disagg_decisions_total", "outcome" => routed.disagg.name()).increment(1);
        }
        let decision = &routed.decision;
        let chosen = decision.chosen().clone();
        let (_, worker, _) = live.iter().find(|(id, ..)| *id == chosen.worker)?.clone();
        let overlap = chosen.overlap.blocks();
        let prefill = routed.prefill.clone();
        metrics::counter!("armature_router_decisions_total", "policy" => policy, "outcome" => "placed").increment(1);
        metrics::counter!("armature_router_prompt_blocks_total").increment(u64::from(decision.prompt_blocks));
        metrics::counter!("armature_router_overlap_blocks_total").increment(u64::from(overlap));
        metrics::histogram!("armature_router_decision_seconds").record(started.elapsed().as_secs_f64());
        let explained = ExplainedDecision {
            request: request.0.clone(),
            worker: chosen.worker.to_string(),
            prefill: prefill.as_ref().map(ToString::to_string),
            prompt_blocks: decision.prompt_blocks,
            overlap_blocks: overlap,
            explanation: decision.to_string(),
        };
        tracing::debug!(request = %request, worker = %chosen.worker, overlap, "placed: {}", explained.explanation);
        if self.recent.len() == RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(explained);
        let onboard = decision.onboard.as_ref().and_then(|o| {
            let kind = match o.tier {
                Tier::Host => TierKind::Host,
                Tier::Disk => TierKind::Disk,
                _ => return None,
            };
            metrics::counter!("armature_router_tier_hints_total", "tier" => o.credited_as.name()).increment(1);
            Some(OnboardHint { source: o.source.clone(), kind, blocks: o.blocks })
        });
        Some(Placement { worker: WorkerHandle::new(chosen.worker.clone(), worker), prefill, onboard })
    }

    fn receive(&mut self, p: KvPublish, router: &ActorRef<RouterMsg>) {
        let now = self.now();
        let lag = runtime::kv::unix_ms().saturating_sub(p.sent_unix_ms);
        metrics::histogram!("armature_router_event_lag_seconds").record(lag as f64 / 1000.0);
        // Every publication carries it (50 a second per worker): no new key unless it is new.
        match (p.load, self.loads.get_mut(&p.worker)) {
            (Some(load), Some(known)) => *known = load,
            (Some(load), None) => {
                self.loads.insert(p.worker.clone(), load);
            }
            (None, _) => {}
        }
        let heard = match p.tier {
            TierKind::Device => self.placer.receive(&p.worker, p.incarnation, &p.batch, now),
            TierKind::Host => self.placer.receive_tier(&p.worker, Tier::Host, p.incarnation, &p.batch, now),
            TierKind::Disk => self.placer.receive_tier(&p.worker, Tier::Disk, p.incarnation, &p.batch, now),
        };
        metrics::counter!("armature_router_kv_events_total", "outcome" => "applied").increment(heard.applied as u64);
        metrics::counter!("armature_router_kv_events_total", "outcome" => "stale").increment(heard.stale as u64);
        if heard.restarted {
            tracing::info!(worker = %p.worker, "worker restarted with a fresh KV pool");
        }
        if self.silent.remove(&p.worker) {
            tracing::info!(worker = %p.worker, "KV events from the worker arrive again");
        }
        if heard.needs_dump && self.dumping.insert(p.worker.clone()) {
            metrics::counter!("armature_router_resyncs_total").increment(1);
            tracing::info!(worker = %p.worker, "lost track of the worker's KV events: asking for a dump");
            let (worker, router, tier) = (p.worker, router.clone(), p.tier);
            tokio::spawn(async move {
                let snapshot = match tier {
                    TierKind::Device => match WorkerHandle::find(&worker) {
                        Some(w) => w.kv_dump(Duration::from_millis(DUMP_TIMEOUT_MS)).await.ok(),
                        None => None,
                    },
                    _ => match discovery::tier(&worker) {
                        Some(c) => call_t!(ActorRef::<TierMsg>::from(c), TierMsg::KvDump, DUMP_TIMEOUT_MS).ok(),
                        None => None,
                    },
                };
                let _ = router.cast(RouterMsg::Dumped { worker, snapshot });
            });
        }
    }

    fn tick(&mut self) {
        let now = self.now();
        self.live();
        self.placer.expire(now);
        for w in self.placer.silent(now, self.silence) {
            if self.silent.insert(w.clone()) {
                metrics::counter!("armature_router_silent_workers_total").increment(1);
                tracing::warn!(
                    worker = %w,
                    silence = ?self.silence,
                    "NO KV EVENTS from this worker for longer than router.event_silence: the router's view of its cache is going stale"
                );
            }
        }
        metrics::gauge!("armature_router_silent_workers").set(self.silent.len() as f64);
        metrics::gauge!("armature_router_index_blocks").set(self.placer.index().len() as f64);
        metrics::gauge!("armature_router_in_flight").set(self.placer.in_flight() as f64);
    }

    fn status(&mut self) -> RouterStatus {
        let live = self.live();
        let roles = live.iter().map(|(id, _, r)| (id.to_string(), *r)).collect();
        let live_workers: Vec<WorkerId> = live.into_iter().map(|(id, ..)| id).collect();
        let index = self.placer.index();
        let mut workers: Vec<WorkerView> = index
            .blocks_by_worker()
            .into_iter()
            .map(|(w, by_tier)| {
                let load = self.placer.load(&w);
                WorkerView {
                    worker: w.to_string(),
                    device_blocks: by_tier[Tier::Device as usize],
                    tier_blocks: by_tier[Tier::Host as usize] + by_tier[Tier::Disk as usize],
                    assumed_blocks: by_tier[Tier::Assumed as usize],
                    prefill_load: load.prefill,
                    decode_load: load.decode,
                    silent: self.silent.contains(&w),
                    load: self.loads.get(&w).copied(),
                }
            })
            .collect();
        workers.sort_by(|a, b| a.worker.cmp(&b.worker));
        RouterStatus {
            policy: self.placer.config().policy,
            live_workers,
            index_blocks: index.len(),
            fingerprint: format!("{:016x}", index.fingerprint(worker_key)),
            workers,
            roles,
            in_flight: self.placer.in_flight(),
            recent: self.recent.iter().cloned().collect(),
        }
    }
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        Actor::spawn_linked(None, KvListener, myself.clone(), myself.get_cell()).await?;
        if let Some(f) = runtime::catalogue::family("armature_router_decisions_total") {
            let policy = args.config.policy.name().to_string();
            for outcome in ["placed", "no_worker"] {
                runtime::catalogue::register_zero(f, &[("policy", policy.clone()), ("outcome", outcome.to_string())]);
            }
        }
        // Ends with the actor (ractor stops an interval whose actor is gone).
        myself.send_interval(TICK, || RouterMsg::Tick);
        Ok(RouterState {
            placer: Placer::new(placer_config(&args.config), rand::random()).with_locality(|w, t| w.node == t.node),
            disagg_min_blocks: args.config.disagg_min_blocks,
            prefill_busy_blocks: args.config.prefill_busy_blocks,
            view: args.view,
            epoch: Instant::now(),
            silence: args.config.event_silence.get(),
            dumping: HashSet::new(),
            loads: HashMap::new(),
            silent: HashSet::new(),
            recent: VecDeque::new(),
            wrong_model: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Place { request, hashes, avoid, model, reply } => {
                let _ = reply.send(state.place(request, &hashes, &avoid, model));
            }
            RouterMsg::FirstToken(request) => state.placer.first_token(&request),
            RouterMsg::Finished(request) => state.placer.finished(&request),
            RouterMsg::Kv(p) => state.receive(p, &myself),
            RouterMsg::Dumped { worker, snapshot } => {
                state.dumping.remove(&worker);
                match snapshot {
                    Some(s) => {
                        let now = state.now();
                        if state.placer.resync(&worker, s.incarnation, &s.dump, now) {
                            tracing::info!(worker = %worker, blocks = s.dump.blocks.len(), "resynced from the worker's dump");
                        }
                    }
                    None => {
                        tracing::warn!(worker = %worker, "the worker did not answer a dump request; will ask again")
                    }
                }
            }
            RouterMsg::Tick => state.tick(),
            RouterMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
            RouterMsg::SetDisaggMinBlocks(blocks) => {
                if blocks != state.disagg_min_blocks {
                    tracing::info!(from = state.disagg_min_blocks, to = blocks, "disaggregation threshold changed");
                    state.disagg_min_blocks = blocks;
                }
            }
        }
        Ok(())
    }
}
