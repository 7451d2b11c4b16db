//! The planner on a cluster: every `planner.interval` it takes what the node's gateway saw
//! (`LatencyWindow`), the prefill backlog and the decode workers' KV use from the router (which
//! hears them with the workers' KV events), counts the live prefill and decode workers and the
//! spare devices, asks the planner core for the pools and its actuation for the actions
//! (`policy::planner::actuate`: which worker flips, starts or stops, the same function the pools
//! simulator runs), and carries them out: `SpareMsg` starts and stops spares, `WorkerMsg::SetRole`
//! flips a worker (the router stops sending the old kind of work at once; what the worker holds
//! finishes as it was, so nothing fails).
//! Decisions are logged with their reasons and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use runtime::config::WorkerRole;
use runtime::discovery;
use runtime::ids::WorkerId;

use crate::protocol::NodeState;
use crate::protocol::{RouterHandle, RouterStatus, SpareMsg, WorkerHandle};
use policy::planner::actuation::heading_pools;
use policy::planner::{Action, Interval, Member, MemberState, Planner, PlannerConfig, actuate};

/// How long a started spare may take to load its model and join before it counts as stopped
/// again.
const START_PATIENCE: Duration = Duration::from_secs(120);

#[derive(RactorMessage)]
pub enum PlannerMsg {
    /// Local timer: decide.
    Tick,
}

pub struct PlannerArgs {
    pub config: PlannerConfig,
    pub interval: Duration,
    pub node: Arc<NodeState>,
    /// Tokens per KV block, to turn the router's predicted prefill blocks into tokens.
    pub block_size: u32,
}

pub struct PlannerActor;

pub struct PlannerState {
    planner: Planner,
    interval: Duration,
    node: Arc<NodeState>,
    block_size: u32,
    /// The disaggregation threshold last sent to the router.
    threshold: Option<u32>,
    /// Spares asked to start and not yet serving: since when, in which role.
    starting: HashMap<WorkerId, (Instant, WorkerRole)>,
}

impl Actor for PlannerActor {
    type Msg = PlannerMsg;
    type State = PlannerState;
    type Arguments = PlannerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PlannerMsg>,
        args: PlannerArgs,
    ) -> Result<PlannerState, ActorProcessingErr> {
        // Ends with the actor (ractor stops an interval whose actor is gone).
        myself.send_interval(args.interval, || PlannerMsg::Tick);
        tracing::info!(mode = ?args.config.mode, interval_ms = args.interval.as_millis() as u64, "planner started");
        Ok(PlannerState {
            planner: Planner::new(args.config),
            interval: args.interval,
            node: args.node,
            block_size: args.block_size,
            threshold: None,
            starting: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<PlannerMsg>,
        msg: PlannerMsg,
        state: &mut PlannerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PlannerMsg::Tick => state.tick().await,
        }
        Ok(())
    }
}

impl PlannerState {
    async fn tick(&mut self) {
        let mut seen = self.node.latency.take(self.interval);
        // What waits for prefill, from the router's predicted loads.
        let router = RouterHandle::local();
        let mut status = None;
        if let Some(router) = &router
            && let Ok(s) = router.status(Duration::from_secs(1)).await
        {
            let (queue, tokens) = prefill_backlog(&s, self.block_size, &seen);
            seen.prefill_queue = queue;
            seen.prefill_queue_tokens = tokens;
            (seen.decode_kv_use, seen.decode_waiting) = decode_load(&s);
            status = Some(s);
        }
        let (roles, draining) = (discovery::roles(), discovery::draining());
        // Live, non-draining workers of the two disaggregated roles.
        let mut cells: HashMap<WorkerId, ractor::ActorCell> = HashMap::new();
        let mut serving: Vec<(WorkerId, WorkerRole)> = Vec::new();
        for (id, cell) in discovery::workers() {
            if !self.node.view.is_alive(&id.node) || draining.contains(&cell.get_id()) {
                continue;
            }
            self.starting.remove(&id);
            if let Some(&role @ (WorkerRole::Prefill | WorkerRole::Decode)) = roles.get(&cell.get_id()) {
                serving.push((id.clone(), role));
                cells.insert(id, cell);
            }
        }
        // Spare devices: stopped ones may be started; running ones (listed above) stopped.
        self.starting.retain(|_, (since, _)| since.elapsed() < START_PATIENCE);
        let spares: HashMap<WorkerId, ActorRef<SpareMsg>> = discovery::spares()
            .into_iter()
            .filter(|(id, _)| self.node.view.is_alive(&id.node))
            .map(|(id, cell)| (id, ActorRef::from(cell)))
            .collect();
        let stopped: Vec<WorkerId> = spares
            .keys()
            .filter(|id| discovery::worker(id).is_none() && !self.starting.contains_key(*id))
            .cloned()
            .collect();
        let count = |role| serving.iter().filter(|(_, r)| *r == role).count();
        if count(WorkerRole::Prefill) == 0 || count(WorkerRole::Decode) == 0 {
            return; // not a disaggregated cluster (yet)
        }
        let load_of = |id: &WorkerId| {
            let name = id.to_string();
            let view = status.as_ref().and_then(|s| s.workers.iter().find(|w| w.worker == name));
            view.and_then(|w| w.load).map_or(0, |l| (l.running + l.waiting) as usize)
        };
        let mut members: Vec<Member<WorkerId>> = serving
            .iter()
            .map(|(id, role)| Member {
                worker: id.clone(),
                state: MemberState::Serving(*role),
                load: load_of(id),
                spare: spares.contains_key(id),
            })
            .collect();
        // Spares that are loading count as the workers they are about to be.
        members.extend(self.starting.iter().map(|(id, (_, role))| Member {
            worker: id.clone(),
            state: MemberState::Starting(*role),
            load: 0,
            spare: true,
        }));
        members.extend(stopped.iter().map(|id| Member {
            worker: id.clone(),
            state: MemberState::Stopped,
            load: 0,
            spare: true,
        }));
        let current = heading_pools(&members);
        self.planner.set_devices(current.total() + stopped.len());
        let decision = self.planner.decide(&seen, current);
        if let Some(router) = &router
            && self.threshold != Some(decision.disagg_min_blocks)
        {
            self.threshold = Some(decision.disagg_min_blocks);
            router.set_disagg_min_blocks(decision.disagg_min_blocks);
        }
        let want = decision.pools;
        let why = decision.reason.as_str();
        metrics::gauge!("armature_planner_pool_target", "role" => "prefill").set(want.prefill as f64);
        metrics::gauge!("armature_planner_pool_target", "role" => "decode").set(want.decode as f64);
        let actions = actuate(&members, want);
        if actions.is_empty() {
            tracing::debug!(?current, reason = why, "planner holds");
        }
        for action in actions {
            match action {
                Action::Flip { worker, to } => {
                    tracing::info!(worker = %worker, to = ?to, reason = why, "planner flips a worker");
                    let label = if to == WorkerRole::Prefill { "prefill" } else { "decode" };
                    metrics::counter!("armature_planner_flips_total", "to" => label).increment(1);
                    if let Some(cell) = cells.get(&worker) {
                        let _ = WorkerHandle::new(worker.clone(), ActorRef::from(cell.clone())).set_role(to);
                    }
                }
                Action::Start { worker, role } => {
                    tracing::info!(worker = %worker, to = ?role, reason = why, "planner starts a spare worker");
                    metrics::counter!("armature_planner_starts_total").increment(1);
                    if let Some(spare) = spares.get(&worker) {
                        let _ = spare.cast(SpareMsg::Start(role));
                    }
                    self.starting.insert(worker, (Instant::now(), role));
                }
                Action::Stop { worker } => {
                    tracing::info!(worker = %worker, reason = why, "planner stops a spare worker");
                    metrics::counter!("armature_planner_stops_total").increment(1);
                    if let Some(spare) = spares.get(&worker) {
                        let _ = spare.cast(SpareMsg::Stop);
                    }
                }
            }
        }
    }
}

/// The workers the router knows in `role`.
fn workers_in(status: &RouterStatus, role: WorkerRole) -> std::collections::HashSet<&str> {
    status.roles.iter().filter(|(_, r)| *r == role).map(|(w, _)| w.as_str()).collect()
}

/// Prompts and tokens waiting for prefill, from the router's predicted prefill load on prefill
/// workers (in blocks), counted in prompts of the interval's mean length.
fn prefill_backlog(status: &RouterStatus, block_size: u32, seen: &Interval) -> (usize, u64) {
    let prefill = workers_in(status, WorkerRole::Prefill);
    let blocks: u64 =
        status.workers.iter().filter(|w| prefill.contains(w.worker.as_str())).map(|w| w.prefill_load).sum();
    let tokens = blocks * u64::from(block_size);
    let mean = seen.input_tokens.checked_div(seen.arrivals).unwrap_or(0).max(1);
    (tokens.div_ceil(mean) as usize, tokens)
}

/// The fullest decode worker's KV pool (0 to 1), and the sequences waiting at the decode
/// workers, from what the workers last told the router.
fn decode_load(status: &RouterStatus) -> (f64, usize) {
    let decode = workers_in(status, WorkerRole::Decode);
    let loads = || status.workers.iter().filter(|w| decode.contains(w.worker.as_str())).filter_map(|w| w.load);
    (loads().map(|l| l.kv_use()).fold(0.0, f64::max), loads().map(|l| l.waiting as usize).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WorkerView;

    fn view(worker: &str, prefill_load: u64) -> WorkerView {
        WorkerView {
            worker: worker.into(),
            device_blocks: 0,
            assumed_blocks: 0,
            tier_blocks: 0,
            prefill_load,
            decode_load: 7,
            silent: false,
            load: None,
        }
    }

    #[test]
    fn the_backlog_counts_prefill_workers_only() {
        let status = RouterStatus {
            policy: runtime::config::RoutingPolicy::Kv,
            live_workers: Vec::new(),
            index_blocks: 0,
            fingerprint: String::new(),
            workers: vec![view("a/cpu", 30), view("b/cpu", 50), view("c/cpu", 0)],
            roles: vec![("a/cpu".into(), WorkerRole::Prefill), ("b/cpu".into(), WorkerRole::Decode)],
            in_flight: 0,
            recent: Vec::new(),
        };
        let seen = Interval { arrivals: 4, input_tokens: 4 * 160, ..Default::default() };
        // 30 blocks of 16 tokens on the prefill worker: 480 tokens, three 160-token prompts.
        assert_eq!(prefill_backlog(&status, 16, &seen), (3, 480));
        assert_eq!(prefill_backlog(&status, 16, &Interval::default()).1, 480);
    }

    const WAITING: u32 = 3;

    #[test]
    fn kv_use_is_the_fullest_decode_workers_and_waiting_their_sum() {
        let load =
            |active| Some(runtime::kv::WorkerLoad { kv_active: active, kv_total: 100, running: 1, waiting: WAITING });
        let status = RouterStatus {
            policy: runtime::config::RoutingPolicy::Kv,
            live_workers: Vec::new(),
            index_blocks: 0,
            fingerprint: String::new(),
            workers: vec![
                WorkerView { load: load(90), ..view("a/cpu", 0) },
                WorkerView { load: load(40), ..view("b/cpu", 0) },
                WorkerView { load: load(70), ..view("c/cpu", 0) },
                view("d/cpu", 0),
            ],
            roles: vec![
                ("a/cpu".into(), WorkerRole::Prefill),
                ("b/cpu".into(), WorkerRole::Decode),
                ("c/cpu".into(), WorkerRole::Decode),
                ("d/cpu".into(), WorkerRole::Decode),
            ],
            in_flight: 0,
            recent: Vec::new(),
        };
        // The prefill worker's pool does not count; a worker that said nothing counts as empty.
        let (kv_use, waiting) = decode_load(&status);
        assert!((kv_use - 0.7).abs() < 1e-9);
        assert_eq!(waiting, WAITING as usize * 2, "b and c say what waits; a does not count");
    }
}
