//! `RouterActor`: answers placements from the workers that discovery shows on live nodes.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use runtime::config::RoutingPolicy;
use runtime::discovery;
use runtime::ids::WorkerId;
use runtime::node::ClusterView;

use super::placer::Placer;
use crate::worker::WorkerMsg;

/// Where a request goes.
#[derive(Clone)]
pub struct Placement {
    pub worker_id: WorkerId,
    pub worker: ActorRef<WorkerMsg>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterStatus {
    pub live_workers: Vec<WorkerId>,
}

#[derive(RactorMessage)]
pub enum RouterMsg {
    /// Pick a worker, avoiding `avoid` when another one is available.
    Place {
        avoid: Vec<WorkerId>,
        reply: RpcReplyPort<Option<Placement>>,
    },
    /// A request placed earlier is over.
    Finished(WorkerId),
    Status(RpcReplyPort<RouterStatus>),
}

pub struct RouterArgs {
    pub policy: RoutingPolicy,
    pub view: Arc<ClusterView>,
}

pub struct RouterActor;

pub struct RouterState {
    placer: Placer,
    view: Arc<ClusterView>,
}

impl RouterState {
    fn live(&mut self) -> Vec<(WorkerId, ActorRef<WorkerMsg>)> {
        let live: Vec<_> = discovery::workers()
            .into_iter()
            .filter(|(id, _)| self.view.is_alive(&id.node))
            .map(|(id, cell)| (id, ActorRef::<WorkerMsg>::from(cell)))
            .collect();
        let ids: Vec<WorkerId> = live.iter().map(|(id, _)| id.clone()).collect();
        self.placer.retain(&ids);
        metrics::gauge!("armature_router_live_workers").set(ids.len() as f64);
        live
    }
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(&self, _: ActorRef<RouterMsg>, args: RouterArgs) -> Result<RouterState, ActorProcessingErr> {
        Ok(RouterState { placer: Placer::new(args.policy), view: args.view })
    }

    async fn handle(
        &self,
        _: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Place { avoid, reply } => {
                let live = state.live();
                let preferred: Vec<WorkerId> =
                    live.iter().map(|(id, _)| id.clone()).filter(|id| !avoid.contains(id)).collect();
                let candidates =
                    if preferred.is_empty() { live.iter().map(|(id, _)| id.clone()).collect() } else { preferred };
                let placement = state.placer.place(&candidates).and_then(|chosen| {
                    let worker = live.iter().find(|(id, _)| *id == chosen)?.1.clone();
                    tracing::debug!(worker = %chosen, load = state.placer.load(&chosen), candidates = candidates.len(), "placed request");
                    Some(Placement { worker_id: chosen, worker })
                });
                metrics::counter!("armature_router_decisions_total", "outcome" => if placement.is_some() { "placed" } else { "no_worker" }).increment(1);
                let _ = reply.send(placement);
            }
            RouterMsg::Finished(worker) => state.placer.finished(&worker),
            RouterMsg::Status(reply) => {
                let live_workers = state.live().into_iter().map(|(id, _)| id).collect();
                let _ = reply.send(RouterStatus { live_workers });
            }
        }
        Ok(())
    }
}
