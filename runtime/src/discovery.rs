//! Discovery through process groups: the group names each role joins, synced across nodes by
//! ractor_cluster.

use std::collections::HashMap;

use ractor::pg;
use ractor::{ActorCell, ActorId};

use crate::config::WorkerRole;
use crate::ids::WorkerId;

/// Every worker, on every node.
pub const WORKERS: &str = "workers";
/// Every node agent (one per node), for heartbeats.
pub const NODE_AGENTS: &str = "node-agents";
/// Every router's KV-event listener: workers publish their pools' events to this group.
pub const KV_LISTENERS: &str = "kv-listeners";
const WORKER_PREFIX: &str = "worker/";

/// The group that holds exactly one worker, so its identity is known without asking it.
pub fn worker_group(id: &WorkerId) -> String {
    format!("{WORKER_PREFIX}{id}")
}

/// Join the groups of a worker.
pub fn join_worker(id: &WorkerId, cell: ActorCell) {
    pg::join(WORKERS.to_string(), vec![cell.clone()]);
    pg::join(worker_group(id), vec![cell]);
}

const ROLE_PREFIX: &str = "worker-role/";

fn role_group(role: WorkerRole) -> String {
    format!("{ROLE_PREFIX}{}", format!("{role:?}").to_lowercase())
}

const ROLES: [WorkerRole; 3] = [WorkerRole::Aggregated, WorkerRole::Prefill, WorkerRole::Decode];

/// Announce a worker's role (leaving the group of any other).
pub fn set_role(cell: ActorCell, role: WorkerRole) {
    for r in ROLES {
        if r != role {
            pg::leave(role_group(r), vec![cell.clone()]);
        }
    }
    pg::join(role_group(role), vec![cell]);
}

/// The announced role of every worker actor visible from this node.
pub fn roles() -> HashMap<ActorId, WorkerRole> {
    ROLES.iter().flat_map(|&r| pg::get_members(&role_group(r)).into_iter().map(move |c| (c.get_id(), r))).collect()
}

/// Worker `id`'s actor, if it is visible from this node.
pub fn worker(id: &WorkerId) -> Option<ActorCell> {
    pg::get_members(&worker_group(id)).into_iter().next()
}

/// Every worker visible from this node (local and remote), with its id.
pub fn workers() -> Vec<(WorkerId, ActorCell)> {
    by_id(WORKER_PREFIX)
}

/// The actors of the groups named `prefix` + a worker id, by id.
fn by_id(prefix: &str) -> Vec<(WorkerId, ActorCell)> {
    let mut found: Vec<(WorkerId, ActorCell)> = pg::which_groups()
        .into_iter()
        .filter_map(|g| {
            let id = WorkerId::parse(g.strip_prefix(prefix)?)?;
            let cell = pg::get_members(&g).into_iter().next()?;
            Some((id, cell))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

const SPARE_PREFIX: &str = "spare/";

/// Announce a spare device (its worker runs only while the planner wants it).
pub fn join_spare(id: &WorkerId, cell: ActorCell) {
    pg::join(format!("{SPARE_PREFIX}{id}"), vec![cell]);
}

/// Every spare device visible from this node, with the id its worker has when running.
pub fn spares() -> Vec<(WorkerId, ActorCell)> {
    by_id(SPARE_PREFIX)
}

/// Workers of nodes shutting down: routers place nothing new on them.
const DRAINING: &str = "workers-draining";

/// Announce that a worker takes no new requests.
pub fn set_draining(cell: ActorCell) {
    pg::join(DRAINING.to_string(), vec![cell]);
}

/// Every draining worker actor visible from this node.
pub fn draining() -> std::collections::HashSet<ActorId> {
    pg::get_members(&DRAINING.to_string()).into_iter().map(|c| c.get_id()).collect()
}

const MODEL_PREFIX: &str = "worker-model/";

/// Announce the model identity a worker serves (`gpu::model::identity`).
pub fn announce_model(identity: u64, cell: ActorCell) {
    pg::join(format!("{MODEL_PREFIX}{identity:016x}"), vec![cell]);
}

/// The announced model identity of every worker actor visible from this node.
pub fn models() -> HashMap<ActorId, u64> {
    pg::which_groups()
        .into_iter()
        .filter_map(|g| Some((u64::from_str_radix(g.strip_prefix(MODEL_PREFIX)?, 16).ok()?, g)))
        .flat_map(|(identity, g)| pg::get_members(&g).into_iter().map(move |c| (c.get_id(), identity)))
        .collect()
}

const TIER_PREFIX: &str = "cache-tier/";

/// Join the group of a node's cache tier (`cache-tier/<node>/<host|disk>`).
pub fn join_tier(node: &str, kind: crate::kv::TierKind, cell: ActorCell) {
    pg::join(format!("{TIER_PREFIX}{}", kind.source(node)), vec![cell]);
}

/// The cache tier `source` (`node/host`, `node/disk`), if it is visible from this node.
pub fn tier(source: &WorkerId) -> Option<ActorCell> {
    pg::get_members(&format!("{TIER_PREFIX}{source}")).into_iter().next()
}

/// Every cache tier visible from this node, by its source id.
pub fn tiers() -> Vec<(WorkerId, ActorCell)> {
    pg::which_groups()
        .into_iter()
        .filter_map(|g| {
            let id = WorkerId::parse(g.strip_prefix(TIER_PREFIX)?)?;
            let cell = pg::get_members(&g).into_iter().next()?;
            Some((id, cell))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_group_names_parse_back() {
        let id = WorkerId::new("n3", "cuda:1");
        let g = worker_group(&id);
        assert_eq!(g, "worker/n3/cuda:1");
        assert_eq!(WorkerId::parse(g.strip_prefix(WORKER_PREFIX).unwrap()), Some(id));
    }
}
