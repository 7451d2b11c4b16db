//! The router's protocol: `RouterMsg` (what a node's gateway and planner send its router), the
//! placement it answers with, its status for `/debug/router` and the planner, and
//! `RouterHandle`, the typed calls with the look-up by name.

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort, call_t};
use ractor_cluster::RactorMessage;
use runtime::config::{RoutingPolicy, WorkerRole};
use runtime::ids::{RequestId, WorkerId};
use runtime::kv::{KvPublish, KvSnapshot, OnboardHint, WorkerLoad};
use serde::Serialize;

use super::node::ROUTER_NAME;
use super::worker::{CallResult, WorkerHandle, millis};

/// Where a request goes.
#[derive(Clone)]
pub struct Placement {
    pub worker: WorkerHandle,
    /// Disaggregated: this prefill worker computes the prompt's uncached blocks for `worker`.
    pub prefill: Option<WorkerId>,
    /// A cache tier holds more of the prompt than the worker: onboard from it.
    pub onboard: Option<OnboardHint>,
}

/// One decision and why it was made.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedDecision {
    pub request: String,
    pub worker: String,
    /// The prefill worker, when disaggregated.
    pub prefill: Option<String>,
    pub prompt_blocks: u32,
    /// Leading prompt blocks the chosen worker was believed to hold.
    pub overlap_blocks: u32,
    /// Every candidate's score and its terms.
    pub explanation: String,
}

/// What the router believes about one worker.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WorkerView {
    pub worker: String,
    pub device_blocks: usize,
    pub assumed_blocks: usize,
    /// For a cache tier (`node/host`, `node/disk`): the blocks it holds.
    pub tier_blocks: usize,
    pub prefill_load: u64,
    pub decode_load: u64,
    /// Its KV events stopped arriving.
    pub silent: bool,
    /// How full it said it was, with its last KV events or heartbeat.
    pub load: Option<WorkerLoad>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouterStatus {
    pub policy: RoutingPolicy,
    pub live_workers: Vec<WorkerId>,
    /// Distinct blocks in the index.
    pub index_blocks: usize,
    /// A digest of the whole index (hex): routers fed the same events agree on it.
    pub fingerprint: String,
    pub workers: Vec<WorkerView>,
    /// Each live worker's role.
    pub roles: Vec<(String, WorkerRole)>,
    pub in_flight: usize,
    pub recent: Vec<ExplainedDecision>,
}

#[derive(RactorMessage)]
pub enum RouterMsg {
    /// Pick a worker for `request`, whose prompt has the block hashes `hashes`, avoiding
    /// `avoid` when another one is available.
    Place {
        request: RequestId,
        hashes: Vec<u64>,
        avoid: Vec<WorkerId>,
        /// The gateway's model identity: only workers that announce it are eligible.
        model: u64,
        reply: RpcReplyPort<Option<Placement>>,
    },
    /// A placed request produced its first token.
    FirstToken(RequestId),
    /// A placed request is over (finished, failed or cancelled).
    Finished(RequestId),
    /// A worker's KV publication, from the listener.
    Kv(KvPublish),
    /// A worker's dump arrived (None: asking failed).
    Dumped {
        worker: WorkerId,
        snapshot: Option<KvSnapshot>,
    },
    Tick,
    Status(RpcReplyPort<RouterStatus>),
    /// From the planner: send prompts with fewer uncached blocks than this to prefill workers no
    /// more (`router.disagg_min_blocks`, changed while the prefill pool is behind).
    SetDisaggMinBlocks(u32),
}

/// A node's router, found by its registered name.
#[derive(Clone, Debug)]
pub struct RouterHandle(ActorRef<RouterMsg>);

impl RouterHandle {
    /// This node's router, if it runs.
    pub fn local() -> Option<Self> {
        ActorRef::<RouterMsg>::where_is(ROUTER_NAME).map(Self)
    }

    /// A worker of model `model` for `request` (prompt block hashes `hashes`), passing over
    /// `avoid` while another will do; None when no worker is eligible.
    pub async fn place(
        &self,
        request: RequestId,
        hashes: Vec<u64>,
        avoid: Vec<WorkerId>,
        model: u64,
        timeout: Duration,
    ) -> CallResult<Option<Placement>, RouterMsg> {
        let place = |reply| RouterMsg::Place { request, hashes, avoid, model, reply };
        call_t!(self.0, place, millis(timeout)).map_err(Box::new)
    }

    /// `request` produced its first token (its prefill load becomes decode load).
    pub fn first_token(&self, request: RequestId) {
        let _ = self.0.cast(RouterMsg::FirstToken(request));
    }

    /// `request`'s placement is over.
    pub fn finished(&self, request: RequestId) {
        let _ = self.0.cast(RouterMsg::Finished(request));
    }

    pub async fn status(&self, timeout: Duration) -> CallResult<RouterStatus, RouterMsg> {
        call_t!(self.0, RouterMsg::Status, millis(timeout)).map_err(Box::new)
    }

    /// From the planner: the disaggregation threshold to use from now on.
    pub fn set_disagg_min_blocks(&self, blocks: u32) {
        let _ = self.0.cast(RouterMsg::SetDisaggMinBlocks(blocks));
    }
}
