//! The planner on a cluster: every `planner.interval` it takes what the node's gateway saw
//! (`LatencyWindow`), the prefill backlog and the decode workers' KV use from the router (which
//! hears them with the workers' KV events), counts the live prefill and decode workers, asks the planner core for the
//! pools, and flips workers' roles to match (`WorkerMsg::SetRole`: the router stops sending the
//! old kind of work at once; what the worker holds finishes as it was, so nothing fails).
//! Decisions are logged with their reasons and counted.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use runtime::config::WorkerRole;
use runtime::discovery;
use runtime::ids::WorkerId;

use super::policy::Interval;
use super::policy::{Planner, PlannerConfig, Pools};
use crate::node::NodeState;
use crate::router::{RouterMsg, RouterStatus};
use crate::worker::WorkerMsg;

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
    timer: tokio::task::JoinHandle<()>,
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
        let timer = myself.send_interval(args.interval, || PlannerMsg::Tick);
        tracing::info!(mode = ?args.config.mode, interval_ms = args.interval.as_millis() as u64, "planner started");
        Ok(PlannerState {
            planner: Planner::new(args.config),
            interval: args.interval,
            node: args.node,
            block_size: args.block_size,
            threshold: None,
            timer,
        })
    }

    async fn post_stop(&self, _: ActorRef<PlannerMsg>, state: &mut PlannerState) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        Ok(())
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
        let router = ractor::registry::where_is(crate::node::ROUTER_NAME).map(ActorRef::<RouterMsg>::from);
        if let Some(router) = &router
            && let Ok(status) = ractor::call_t!(router, RouterMsg::Status, 1000)
        {
            let (queue, tokens) = prefill_backlog(&status, self.block_size, &seen);
            seen.prefill_queue = queue;
            seen.prefill_queue_tokens = tokens;
            seen.decode_kv_use = decode_kv_use(&status);
        }
        let (roles, draining) = (discovery::roles(), discovery::draining());
        // Live, non-draining workers of the two disaggregated roles.
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        for (id, cell) in discovery::workers() {
            if !self.node.view.is_alive(&id.node) || draining.contains(&cell.get_id()) {
                continue;
            }
            match roles.get(&cell.get_id()) {
                Some(WorkerRole::Prefill) => prefill.push((id, cell)),
                Some(WorkerRole::Decode) => decode.push((id, cell)),
                _ => {}
            }
        }
        let current = Pools { prefill: prefill.len(), decode: decode.len() };
        if current.prefill == 0 || current.decode == 0 {
            return; // not a disaggregated cluster (yet)
        }
        let devices = current.total();
        let decision = self.planner.decide(&seen, current);
        if let Some(router) = &router
            && self.threshold != Some(decision.disagg_min_blocks)
        {
            self.threshold = Some(decision.disagg_min_blocks);
            let _ = router.cast(RouterMsg::SetDisaggMinBlocks(decision.disagg_min_blocks));
        }
        // Every worker serves one of the two pools; the planner picks the split.
        let want_prefill = decision.pools.prefill.clamp(1, devices - 1);
        metrics::gauge!("armature_planner_pool_target", "role" => "prefill").set(want_prefill as f64);
        metrics::gauge!("armature_planner_pool_target", "role" => "decode").set((devices - want_prefill) as f64);
        let flip = |from: &mut Vec<(WorkerId, ractor::ActorCell)>, to: WorkerRole, why: &str| {
            // The last in name order flips, so decisions are stable across ticks.
            let (id, cell) = from.pop().expect("a worker to flip");
            tracing::info!(worker = %id, to = ?to, reason = why, "planner flips a worker");
            metrics::counter!("armature_planner_flips_total", "to" => if to == WorkerRole::Prefill { "prefill" } else { "decode" })
                .increment(1);
            let _ = ActorRef::<WorkerMsg>::from(cell).cast(WorkerMsg::SetRole(to));
        };
        if want_prefill > current.prefill {
            for _ in current.prefill..want_prefill {
                flip(&mut decode, WorkerRole::Prefill, &decision.reason);
            }
        } else if want_prefill < current.prefill {
            for _ in want_prefill..current.prefill {
                flip(&mut prefill, WorkerRole::Decode, &decision.reason);
            }
        } else {
            tracing::debug!(?current, reason = %decision.reason, "planner holds");
        }
    }
}

/// Prompts and tokens waiting for prefill, from the router's predicted prefill load on prefill
/// workers (in blocks), counted in prompts of the interval's mean length.
fn prefill_backlog(status: &RouterStatus, block_size: u32, seen: &Interval) -> (usize, u64) {
    let prefill: std::collections::HashSet<&str> =
        status.roles.iter().filter(|(_, r)| *r == WorkerRole::Prefill).map(|(w, _)| w.as_str()).collect();
    let blocks: u64 =
        status.workers.iter().filter(|w| prefill.contains(w.worker.as_str())).map(|w| w.prefill_load).sum();
    let tokens = blocks * u64::from(block_size);
    let mean = seen.input_tokens.checked_div(seen.arrivals).unwrap_or(0).max(1);
    (tokens.div_ceil(mean) as usize, tokens)
}

/// The fullest decode worker's KV pool (0 to 1), from what the workers last told the router.
fn decode_kv_use(status: &RouterStatus) -> f64 {
    let decode: std::collections::HashSet<&str> =
        status.roles.iter().filter(|(_, r)| *r == WorkerRole::Decode).map(|(w, _)| w.as_str()).collect();
    status
        .workers
        .iter()
        .filter(|w| decode.contains(w.worker.as_str()))
        .filter_map(|w| w.load.map(|l| l.kv_use()))
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::WorkerView;

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

    #[test]
    fn kv_use_is_the_fullest_decode_workers() {
        let load = |active| Some(runtime::kv::WorkerLoad { kv_active: active, kv_total: 100, running: 1, waiting: 0 });
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
        assert!((decode_kv_use(&status) - 0.7).abs() < 1e-9);
    }
}
