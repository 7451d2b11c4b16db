//! A node's plan (which roles and workers this process runs) and its children under the
//! `NodeSupervisor`. The state its actors share is `protocol::NodeState`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gpu::model::{ModelError, ModelFrontend};
use ractor::Actor;
use runtime::config::{ClusterConfig, ConfigError, NodeCacheConfig, Role, WorkerConfig};
use runtime::ids::WorkerId;
use runtime::kv::TierKind;
use runtime::node::{AgentArgs, NodeAgent};
use runtime::supervision::ChildSpec;

use crate::cache::{CacheTierActor, TierArgs};
use crate::gateway::{Gateway, GatewayActor, GatewayArgs};
use crate::protocol::{NodeState, ROUTER_NAME};
use crate::router::{RouterActor, RouterArgs};
use crate::worker::onboard::TierAccess;
use crate::worker::{Disagg, SpareActor, SpareArgs, WorkerActor, WorkerArgs};

/// Heartbeat settings of a node that is part of a multi-node cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    pub lease_timeout: Duration,
}

/// What one process runs.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePlan {
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub gateway: Option<SocketAddr>,
    /// KV data-plane address.
    pub data: Option<SocketAddr>,
    pub workers: Vec<(WorkerId, WorkerConfig)>,
    pub heartbeat: Option<Heartbeat>,
    /// The node's cache tiers.
    pub cache: NodeCacheConfig,
}

fn with_port(mut addr: SocketAddr, port: Option<u16>) -> SocketAddr {
    if let Some(p) = port {
        addr.set_port(p);
    }
    addr
}

impl NodePlan {
    /// Node `name` of the topology, as `armature node` runs it.
    pub fn node(config: &ClusterConfig, name: &str, http_port: Option<u16>) -> Result<Self, ConfigError> {
        let node = config.node(name).ok_or_else(|| {
            let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
            ConfigError::new("--name", "", format!("no node \"{name}\" in the topology (nodes: {})", names.join(", ")))
        })?;
        Ok(Self {
            name: node.name.clone(),
            roles: node.roles.iter().copied().collect(),
            gateway: node.gateway.map(|g| with_port(g, http_port)),
            data: node.data,
            workers: node
                .workers
                .iter()
                .map(|w| (WorkerId::new(&node.name, &w.device.to_string()), w.clone()))
                .collect(),
            heartbeat: Some(Heartbeat {
                interval: config.cluster.heartbeat_interval.get(),
                lease_timeout: config.cluster.lease_timeout.get(),
            }),
            cache: node.cache.clone(),
        })
    }

    /// The whole topology in one process, as `armature serve` runs it: every role and every
    /// worker, the first gateway address, no control-plane networking.
    pub fn whole(config: &ClusterConfig, http_port: Option<u16>) -> Self {
        let gateway = config.nodes.iter().find_map(|n| n.gateway).map(|g| with_port(g, http_port));
        Self {
            name: config.nodes[0].name.clone(),
            roles: config.nodes.iter().flat_map(|n| n.roles.iter().copied()).collect(),
            gateway,
            data: config.nodes.iter().find_map(|n| n.data),
            workers: config
                .nodes
                .iter()
                .flat_map(|n| n.workers.iter().map(move |w| (WorkerId::new(&n.name, &w.device.to_string()), w.clone())))
                .collect(),
            heartbeat: None,
            cache: config.nodes[0].cache.clone(),
        }
    }
}

/// The supervised children of a node, in start order: agent, router, workers, gateway.
/// Why a node's actors could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ChildrenError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The API keys file (a configuration error).
    #[error(transparent)]
    Keys(#[from] runtime::config::ConfigError),
}

pub fn children(
    plan: &NodePlan,
    config: &ClusterConfig,
    state: Arc<NodeState>,
) -> Result<Vec<ChildSpec>, ChildrenError> {
    let mut specs = Vec::new();
    if let Some(hb) = plan.heartbeat {
        let (node, view, control) = (plan.name.clone(), state.view.clone(), state.control.clone());
        specs.push(ChildSpec::new("node-agent", move |sup| {
            let args = AgentArgs {
                node: node.clone(),
                control: control.clone(),
                interval: hb.interval,
                lease_timeout: hb.lease_timeout,
                view: view.clone(),
            };
            Box::pin(async move {
                Ok(Actor::spawn_linked(Some("node-agent".into()), NodeAgent, args, sup).await?.0.get_cell())
            })
        }));
    }
    if plan.roles.contains(&Role::Router) {
        let (router, view) = (config.router.clone(), state.view.clone());
        specs.push(ChildSpec::new("router", move |sup| {
            let args = RouterArgs { config: router.clone(), view: view.clone() };
            Box::pin(async move {
                Ok(Actor::spawn_linked(Some(ROUTER_NAME.into()), RouterActor, args, sup).await?.0.get_cell())
            })
        }));
    }
    if plan.roles.contains(&Role::Router) && config.planner.enabled {
        let devices = config.nodes.iter().map(|n| n.workers.len()).sum();
        let (planner, interval, node) = (
            policy::planner::config_from(&config.planner, &config.router, devices),
            config.planner.interval.get(),
            state.clone(),
        );
        let block_size = config.cluster.block_size;
        specs.push(ChildSpec::new("planner", move |sup| {
            let args =
                crate::planner::PlannerArgs { config: planner.clone(), interval, node: node.clone(), block_size };
            Box::pin(async move {
                Ok(Actor::spawn_linked(Some("planner".into()), crate::planner::PlannerActor, args, sup)
                    .await?
                    .0
                    .get_cell())
            })
        }));
    }
    let disagg = state.data_plane.as_ref().map(|plane| {
        Arc::new(Disagg {
            plane: plane.clone(),
            node: plan.name.clone(),
            hasher: runtime::blocks::BlockHasher::new(config.cluster.block_size as usize),
            transfer_timeout: config.transport.transfer_timeout.get(),
            device_copies: config.transport.device_copies,
        })
    });
    // Disk first: the host tier hands it what it evicts.
    let tiers = [(TierKind::Disk, plan.cache.disk), (TierKind::Host, plan.cache.host)];
    for (kind, budget) in tiers.into_iter().filter_map(|(k, b)| Some((k, b?.bytes()))) {
        let (node, dir, plane) = (plan.name.clone(), plan.cache.disk_dir.clone(), state.data_plane.clone());
        let disk_after_reuses = config.cache.disk_after_reuses;
        let name = format!("cache-tier {}", kind.name());
        specs.push(ChildSpec::new(name.clone(), move |sup| {
            let args = TierArgs {
                node: node.clone(),
                kind,
                budget,
                dir: dir.clone(),
                disk_after_reuses,
                plane: plane.clone(),
            };
            let name = name.clone();
            Box::pin(async move { Ok(Actor::spawn_linked(Some(name), CacheTierActor, args, sup).await?.0.get_cell()) })
        }));
    }
    // Workers use tiers on any node (another node's over the data plane), and offload into
    // their own node's.
    let tier_access = Arc::new(TierAccess {
        node: plan.name.clone(),
        hasher: runtime::blocks::BlockHasher::new(config.cluster.block_size as usize),
        cache: config.cache.clone(),
        offload: match plan.cache.host.or(plan.cache.disk) {
            Some(_) => config.cache.offload,
            None => runtime::config::OffloadMode::Off,
        },
        plane: state.data_plane.clone(),
    });
    let grace = config.cluster.shutdown_grace.get();
    for (id, worker) in &plan.workers {
        let (id, worker, model, block_size, disagg) =
            (id.clone(), worker.clone(), config.model.clone(), config.cluster.block_size, disagg.clone());
        let tiers = tier_access.clone();
        let spare = worker.spare;
        let name = if spare { format!("spare {id}") } else { format!("worker {id}") };
        specs.push(ChildSpec::new(name.clone(), move |sup| {
            let args = WorkerArgs {
                id: id.clone(),
                block_size,
                config: worker.clone(),
                model: model.clone(),
                disagg: disagg.clone(),
                tiers: Some(tiers.clone()),
            };
            let name = name.clone();
            Box::pin(async move {
                if spare {
                    let args = SpareArgs { worker: args, grace };
                    return Ok(Actor::spawn_linked(Some(name), SpareActor, args, sup).await?.0.get_cell());
                }
                Ok(Actor::spawn_linked(Some(name), WorkerActor, args, sup).await?.0.get_cell())
            })
        }));
    }
    if let (true, Some(addr)) = (plan.roles.contains(&Role::Gateway), plan.gateway) {
        let auth = Arc::new(crate::gateway::Auth::load(&config.gateway)?);
        if auth.required() {
            tracing::info!("the API needs a key (gateway.api_keys_file)");
        } else if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "no API keys are configured: anyone who reaches the gateway may use the API");
        }
        auth.spawn_reload();
        let model = ModelFrontend::load(&config.model, config.model_name())?;
        let gateway = Arc::new(Gateway {
            auth,
            model_identity: model.identity(),
            model,
            node: state,
            config: config.gateway.clone(),
            hasher: runtime::blocks::BlockHasher::new(config.cluster.block_size as usize),
            history: Default::default(),
        });
        specs.push(ChildSpec::new("gateway", move |sup| {
            let args = GatewayArgs { addr, gateway: gateway.clone() };
            Box::pin(async move {
                Ok(Actor::spawn_linked(Some("gateway".into()), GatewayActor, args, sup).await?.0.get_cell())
            })
        }));
    }
    Ok(specs)
}
