//! The worker's protocol: `WorkerMsg` (what gateways, routers and prefill peers send a worker,
//! local or remote alike), `SpareMsg` (what the planner sends a spare device), and
//! `WorkerHandle`, the typed calls with their discovery look-up.

use std::time::Duration;

use ractor::{ActorRef, RactorErr, RpcReplyPort, call_t};
use ractor_cluster::RactorClusterMessage;
use runtime::config::WorkerRole;
use runtime::discovery;
use runtime::ids::{RequestId, WorkerId};
use runtime::kv::KvSnapshot;
use runtime::request::{Admission, PollReply, PollRequest, PrefillReply, PrefillRequest, Submission};

#[derive(RactorClusterMessage)]
pub enum WorkerMsg {
    /// Queue a request (after fetching its prompt's KV from a prefill worker, if one is named).
    #[rpc]
    Submit(Submission, RpcReplyPort<Admission>),
    /// Compute a prompt's KV for a decode worker and stream it there.
    #[rpc]
    Prefill(PrefillRequest, RpcReplyPort<PrefillReply>),
    /// Take another role from now on (what the router sends here changes; work in flight
    /// finishes as it was).
    SetRole(WorkerRole),
    /// New output of a request, waiting up to `max_wait_ms` for some.
    #[rpc]
    Poll(PollRequest, RpcReplyPort<PollReply>),
    /// Stop a request and free what it holds.
    Cancel(RequestId),
    /// The pool's full state, for a router that lost track of its events (no answer when the
    /// engine is gone).
    #[rpc]
    KvDump(RpcReplyPort<KvSnapshot>),
    /// The node is shutting down: take no new requests (routers stop placing here) and answer
    /// with the requests still open; those run on until they finish or the node stops.
    #[rpc]
    Drain(RpcReplyPort<u32>),
    /// Local timer: publish new KV events (or a heartbeat) to the routers.
    PublishKv,
    /// From the engine thread: it ended (with why).
    EngineExited(String),
}

#[derive(RactorClusterMessage)]
pub enum SpareMsg {
    /// Start the worker in `role` (nothing if it runs).
    Start(WorkerRole),
    /// Drain the worker, then stop it (nothing if it is stopped or stopping).
    Stop,
    /// Local: the worker being stopped holds nothing more (or its grace ran out).
    Drained,
}

/// A worker as its callers reach it: its id and its actor (local or on another node, the same
/// code), with one method per call.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    pub id: WorkerId,
    actor: ActorRef<WorkerMsg>,
}

/// A call's answer, or why it did not come (the actor is gone, or the timeout passed).
pub type CallResult<T, M> = Result<T, Box<RactorErr<M>>>;

/// A timeout in the whole milliseconds ractor's calls take.
pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl WorkerHandle {
    pub fn new(id: WorkerId, actor: ActorRef<WorkerMsg>) -> Self {
        Self { id, actor }
    }

    /// The worker `id`, if discovery shows it.
    pub fn find(id: &WorkerId) -> Option<Self> {
        discovery::worker(id).map(|cell| Self::new(id.clone(), ActorRef::from(cell)))
    }

    /// Queue a request, with its prefill worker and tier hint.
    pub async fn submit(&self, submission: Submission, timeout: Duration) -> CallResult<Admission, WorkerMsg> {
        call_t!(self.actor, WorkerMsg::Submit, millis(timeout), submission).map_err(Box::new)
    }

    /// The request's new output, waiting on the worker up to `poll.max_wait_ms` for some, and on
    /// the call up to `timeout` beyond that.
    pub async fn poll(&self, poll: PollRequest, timeout: Duration) -> CallResult<PollReply, WorkerMsg> {
        let wait = Duration::from_millis(poll.max_wait_ms);
        call_t!(self.actor, WorkerMsg::Poll, millis(timeout + wait), poll).map_err(Box::new)
    }

    /// Stop a request and free what it holds (best-effort: a worker that is gone holds nothing).
    pub fn cancel(&self, request: RequestId) {
        let _ = self.actor.cast(WorkerMsg::Cancel(request));
    }

    /// Take `role` from now on.
    pub fn set_role(&self, role: WorkerRole) -> CallResult<(), WorkerMsg> {
        self.actor.cast(WorkerMsg::SetRole(role)).map_err(|e| Box::new(RactorErr::from(e)))
    }

    /// The pool's whole state, for a router that lost track of its events.
    pub async fn kv_dump(&self, timeout: Duration) -> CallResult<KvSnapshot, WorkerMsg> {
        call_t!(self.actor, WorkerMsg::KvDump, millis(timeout)).map_err(Box::new)
    }
}
