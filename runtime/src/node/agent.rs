//! The node agent: heartbeats to every peer's agent on the control plane and a lease per peer,
//! so a silent node (stopped, partitioned) is marked dead; ractor_cluster alone never notices.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, pg};
use ractor_cluster::RactorClusterMessage;

use crate::discovery::NODE_AGENTS;
use crate::lease::{LeaseTable, PeerChange};

/// Which peer nodes this node currently considers dead. Shared with the router.
#[derive(Debug, Default)]
pub struct ClusterView {
    dead: RwLock<BTreeSet<String>>,
    /// Every peer's lease as of the agent's last message.
    leases: RwLock<Vec<crate::lease::PeerLease>>,
}

impl ClusterView {
    pub fn is_alive(&self, node: &str) -> bool {
        !self.dead.read().expect("cluster view lock").contains(node)
    }

    pub fn dead_nodes(&self) -> Vec<String> {
        self.dead.read().expect("cluster view lock").iter().cloned().collect()
    }

    /// The peers' leases, as the node agent last saw them.
    pub fn leases(&self) -> Vec<crate::lease::PeerLease> {
        self.leases.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn apply(&self, change: &PeerChange) {
        let mut dead = self.dead.write().expect("cluster view lock");
        match change {
            PeerChange::Up(n) => dead.remove(n),
            PeerChange::Down(n) => dead.insert(n.clone()),
        };
    }
}

#[derive(RactorClusterMessage)]
pub enum AgentMsg {
    /// A peer node's agent is alive (payload: its node name).
    Heartbeat(String),
    /// Local timer: send heartbeats and expire leases.
    Tick,
}

pub struct AgentArgs {
    pub node: String,
    /// This node's control plane: peers with a session get a lease even before their first heartbeat.
    pub control: Option<super::ControlPlane>,
    pub interval: Duration,
    pub lease_timeout: Duration,
    pub view: Arc<ClusterView>,
}

pub struct NodeAgent;

pub struct AgentState {
    node: String,
    control: Option<super::ControlPlane>,
    leases: LeaseTable,
    epoch: Instant,
    view: Arc<ClusterView>,
    timer: tokio::task::JoinHandle<()>,
}

impl Actor for NodeAgent {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(&self, myself: ActorRef<AgentMsg>, args: AgentArgs) -> Result<AgentState, ActorProcessingErr> {
        pg::join(NODE_AGENTS.to_string(), vec![myself.get_cell()]);
        let timer = myself.send_interval(args.interval, || AgentMsg::Tick);
        Ok(AgentState {
            node: args.node,
            control: args.control,
            leases: LeaseTable::new(args.lease_timeout),
            epoch: Instant::now(),
            view: args.view,
            timer,
        })
    }

    async fn post_stop(&self, _: ActorRef<AgentMsg>, state: &mut AgentState) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        let now = state.epoch.elapsed();
        let changes = match msg {
            AgentMsg::Heartbeat(peer) => state.leases.heard(&peer, now).into_iter().collect(),
            AgentMsg::Tick => {
                if let Some(cp) = &state.control {
                    for peer in cp.peers().await {
                        state.leases.expect(&peer, now);
                    }
                }
                for cell in pg::get_members(&NODE_AGENTS.to_string()) {
                    if !cell.get_id().is_local() {
                        let _ = ActorRef::<AgentMsg>::from(cell).cast(AgentMsg::Heartbeat(state.node.clone()));
                    }
                }
                state.leases.expire(now)
            }
        };
        for change in changes {
            match &change {
                PeerChange::Up(n) => tracing::info!(peer = %n, "peer node is alive"),
                PeerChange::Down(n) => {
                    metrics::counter!("armature_node_leases_expired_total").increment(1);
                    tracing::warn!(peer = %n, "peer node missed its lease: marking it dead")
                }
            }
            state.view.apply(&change);
        }
        metrics::gauge!("armature_peer_nodes_alive").set(state.leases.alive().count() as f64);
        *state.view.leases.write().unwrap_or_else(|p| p.into_inner()) = state.leases.leases(now);
        Ok(())
    }
}
