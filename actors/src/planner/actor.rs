//! The planner on a cluster: every `planner.interval` it takes what the node's gateway saw
//! (`LatencyWindow`), counts the live prefill and decode workers, asks the planner core for the
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

use super::policy::{Planner, PlannerConfig, Pools};
use crate::node::NodeState;
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
}

pub struct PlannerActor;

pub struct PlannerState {
    planner: Planner,
    interval: Duration,
    node: Arc<NodeState>,
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
        Ok(PlannerState { planner: Planner::new(args.config), interval: args.interval, node: args.node, timer })
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
            PlannerMsg::Tick => state.tick(),
        }
        Ok(())
    }
}

impl PlannerState {
    fn tick(&mut self) {
        let seen = self.node.latency.take(self.interval);
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
