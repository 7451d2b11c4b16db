//! `WorkerActor`: admission (queue limit, context check), submit and cancel into the engine thread,
//! long-poll replies, KV-event publication, its role (changeable by message) and both sides of
//! disaggregated prefill. It panics when its engine dies, so its supervisor restarts it fresh.

use std::sync::Arc;
use std::time::Duration;

use gpu::model::KvBudget;
use gpu::{Engine, EngineHandle, EngineLimits, LoadedModel, Taken};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use runtime::config::{ModelSection, WorkerConfig, WorkerRole};
use runtime::discovery;
use runtime::ids::{RequestId, WorkerId};
use runtime::kv::{KvSnapshot, TierKind};
use runtime::request::{
    Admission, GenerateRequest, PollReply, PollRequest, PrefillReply, StreamEvent, Submission, WorkerFailure,
};

use super::disagg::{self, Disagg};
use super::onboard::{TierAccess, onboard_then_run};
use runtime::trace::TARGET;
use tracing::{Instrument, Span};

use crate::protocol::{KvPublisher, WorkerMsg};

/// Longest a poll may wait for output before answering with nothing.
const MAX_POLL_WAIT: Duration = Duration::from_secs(5);
#[derive(Clone)]
pub struct WorkerArgs {
    pub id: WorkerId,
    /// Tokens per KV block (`cluster.block_size`).
    pub block_size: u32,
    pub config: WorkerConfig,
    pub model: ModelSection,
    /// The node's data plane, for disaggregated prefill (None: this worker only serves whole
    /// requests).
    pub disagg: Option<Arc<Disagg>>,
    /// The node's cache tiers, when it has any.
    pub tiers: Option<Arc<TierAccess>>,
}

pub struct WorkerActor;

pub struct WorkerState {
    id: WorkerId,
    engine: Arc<EngineHandle>,
    role: WorkerRole,
    disagg: Option<Arc<Disagg>>,
    tiers: Option<Arc<TierAccess>>,
    capacity: usize,
    /// None: this worker publishes no KV events (`kv_events = false`).
    kv: Option<KvPublisher>,
    /// Taking no new requests (`Drain`).
    draining: bool,
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let budget = match args.config.kv_memory {
            Some(bytes) => KvBudget::Bytes(bytes.bytes()),
            None => KvBudget::Blocks(args.config.kv_blocks as usize),
        };
        let model = LoadedModel::load(&args.model, args.config.device, budget, args.block_size as usize)?;
        let info = model.executor.info();
        let limits = EngineLimits {
            max_batch: args.config.max_batch as usize,
            max_queue: args.config.max_queue as usize,
            context_length: info.context_length,
            block_size: args.block_size as usize,
            kv_blocks: model.kv_blocks,
            max_batch_tokens: args.config.max_batch_tokens as usize,
        };
        let identity = gpu::model::identity(&args.model.served_name(), &*model.tokenizer);
        let mut engine = Engine::new(model.executor, model.tokenizer, limits);
        if let Some(t) = &args.tiers {
            engine.set_offload(t.offload);
        }
        let me = myself.clone();
        let handle = EngineHandle::spawn(engine, &args.id.to_string(), move |why| {
            let _ = me.cast(WorkerMsg::EngineExited(why.unwrap_or_else(|| "stopped".into())));
        })?;
        // The model first: a router places only on workers whose model it can see.
        discovery::announce_model(identity, myself.get_cell());
        discovery::join_worker(&args.id, myself.get_cell());
        discovery::set_role(myself.get_cell(), args.config.role);
        tracing::info!(worker = %args.id, model = %info.name, max_batch = limits.max_batch, kv_events = args.config.kv_events, "worker started");
        let kv = args.config.kv_events.then(|| KvPublisher::new(args.id.clone(), TierKind::Device));
        // Ends with the actor (ractor stops an interval whose actor is gone).
        myself.send_interval(crate::protocol::KV_PUBLISH_INTERVAL, || WorkerMsg::PublishKv);
        Ok(WorkerState {
            id: args.id,
            engine: Arc::new(handle),
            role: args.config.role,
            disagg: args.disagg,
            tiers: args.tiers,
            capacity: limits.max_batch + limits.max_queue,
            kv,
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Submit(sub, reply) => {
                let (id, tag) = (sub.request.id.clone(), sub.request.tag.clone());
                let span = request_span(&state.id, &sub);
                let admission = state.admit(sub, &span);
                span.record("admission", tracing::field::debug(&admission));
                tracing::debug!(worker = %state.id, request = %id, tag = tag.as_deref().unwrap_or(""), ?admission, "submit");
                let _ = reply.send(admission);
            }
            WorkerMsg::Prefill(request, reply) => match &state.disagg {
                Some(d) => {
                    let span = tracing::info_span!(target: TARGET, "worker.prefill", otel.kind = "server",
                        worker = %state.id, armature.request = %request.id, tokens = request.tokens.len(),
                        skip = request.skip, to = %request.to_node, route = tracing::field::Empty,
                        blocks = tracing::field::Empty, otel.status_code = tracing::field::Empty,
                        error = tracing::field::Empty);
                    runtime::trace::set_parent(&span, request.trace.as_ref());
                    let serve = disagg::serve_prefill(state.engine.clone(), d.plane.clone(), request, reply);
                    tokio::spawn(serve.instrument(span));
                }
                None => {
                    let _ = reply.send(PrefillReply::Failed(format!("worker {} has no data plane", state.id)));
                }
            },
            WorkerMsg::SetRole(role) => {
                if role != state.role {
                    tracing::info!(worker = %state.id, from = ?state.role, to = ?role, "role changed");
                    state.role = role;
                    discovery::set_role(myself.get_cell(), role);
                    metrics::counter!("armature_worker_role_changes_total").increment(1);
                }
            }
            WorkerMsg::Poll(poll, reply) => state.poll(poll, reply),
            WorkerMsg::Cancel(id) => {
                if state.engine.cancel(&id) {
                    tracing::debug!(worker = %state.id, request = %id, "request cancelled");
                }
            }
            WorkerMsg::KvDump(reply) => {
                let (dump, incarnation) = (state.engine.kv_dump(), state.kv.as_ref().map_or(0, |k| k.incarnation()));
                tokio::spawn(async move {
                    if let Some(dump) = dump.await {
                        let _ = reply.send(KvSnapshot { incarnation, dump });
                    }
                });
            }
            WorkerMsg::Drain(reply) => {
                if !state.draining {
                    tracing::info!(worker = %state.id, open = state.engine.outputs().open_requests(), "draining");
                    state.draining = true;
                    discovery::set_draining(myself.get_cell());
                }
                let _ = reply.send(state.engine.outputs().open_requests() as u32);
            }
            WorkerMsg::PublishKv => state.publish_kv(),
            WorkerMsg::EngineExited(why) => {
                // Let the supervisor restart this worker with a fresh engine.
                panic!("worker {}: engine thread ended: {why}", state.id);
            }
        }
        Ok(())
    }
}

/// A submitted request's span on this worker (`worker.request`), a child of the span that
/// submitted it.
fn request_span(worker: &WorkerId, sub: &Submission) -> Span {
    let span = tracing::info_span!(target: TARGET, "worker.request", otel.kind = "server", worker = %worker,
        armature.request = %sub.request.id, prompt_tokens = sub.request.prompt_tokens.len(),
        prefill = sub.prefill_from.as_ref().map(ToString::to_string), onboard = sub.onboard.is_some(),
        admission = tracing::field::Empty, finish = tracing::field::Empty, completion_tokens = tracing::field::Empty,
        cached_tokens = tracing::field::Empty, otel.status_code = tracing::field::Empty, error = tracing::field::Empty);
    runtime::trace::set_parent(&span, sub.request.trace.as_ref());
    span
}

impl WorkerState {
    /// Publish the pool's new KV events, or a heartbeat when there are none for a while.
    fn publish_kv(&mut self) {
        let records = self.engine.kv_feed().take();
        if let Some(kv) = &mut self.kv {
            kv.publish(records, Some(self.engine.kv_feed().load()));
        }
        if let Some(t) = &self.tiers {
            t.offload(&self.engine);
        }
    }

    /// Take `sub` or say why not; an accepted request is traced under `span`.
    fn admit(&self, sub: Submission, span: &Span) -> Admission {
        let req: GenerateRequest = sub.request;
        if self.draining {
            return Admission::Unavailable(format!("worker {} is draining", self.id));
        }
        let open = self.engine.outputs().open_requests();
        if open >= self.capacity {
            metrics::counter!("armature_worker_overloaded_total").increment(1);
            return Admission::Overloaded { queued: open as u32 };
        }
        if let Err(reason) = Engine::check(&self.engine.limits(), &req) {
            return Admission::Rejected(reason.to_string());
        }
        if let (Some(from), Some(d)) = (sub.prefill_from, &self.disagg)
            && self.engine.block_layout().is_some()
        {
            // Polls wait on the open outbox while the prompt's KV arrives.
            if let Err(reason) = self.engine.open(&req.id) {
                return Admission::Unavailable(reason.to_string());
            }
            self.engine.outputs().trace(&req.id, span.clone());
            let fetch = tracing::info_span!(target: TARGET, parent: span, "kv.fetch", prefill = %from,
                route = tracing::field::Empty, blocks = tracing::field::Empty, skipped = tracing::field::Empty,
                outcome = tracing::field::Empty);
            tokio::spawn(disagg::prefill_remotely(self.engine.clone(), d.clone(), req, from).instrument(fetch));
            return Admission::Accepted;
        }
        if let (Some(hint), Some(t)) = (sub.onboard, &self.tiers)
            && self.engine.block_layout().is_some()
        {
            if let Err(reason) = self.engine.open(&req.id) {
                return Admission::Unavailable(reason.to_string());
            }
            self.engine.outputs().trace(&req.id, span.clone());
            let onboard = tracing::info_span!(target: TARGET, parent: span, "tier.onboard", tier = %hint.source,
                blocks = tracing::field::Empty, outcome = tracing::field::Empty);
            tokio::spawn(onboard_then_run(self.engine.clone(), t.clone(), req, hint).instrument(onboard));
            return Admission::Accepted;
        }
        if let Err(reason) = self.engine.open(&req.id) {
            return Admission::Unavailable(reason.to_string());
        }
        self.engine.outputs().trace(&req.id, span.clone());
        match self.engine.submit_opened(req) {
            Ok(()) => Admission::Accepted,
            Err(reason) => Admission::Unavailable(reason.to_string()),
        }
    }

    fn poll(&self, poll: PollRequest, reply: RpcReplyPort<PollReply>) {
        let unknown = |id: &RequestId| PollReply {
            events: vec![StreamEvent::Failed(WorkerFailure::UnknownRequest(id.0.clone()))],
        };
        match self.engine.outputs().take(&poll.id) {
            Taken::Events(events) => {
                let _ = reply.send(PollReply { events });
            }
            Taken::Unknown => {
                let _ = reply.send(unknown(&poll.id));
            }
            Taken::Pending(notify) => {
                let outputs = self.engine.outputs().clone();
                let wait = Duration::from_millis(poll.max_wait_ms).min(MAX_POLL_WAIT);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(wait, notify.notified()).await;
                    let answer = match outputs.take(&poll.id) {
                        Taken::Events(events) => PollReply { events },
                        Taken::Pending(_) => PollReply::default(),
                        Taken::Unknown => unknown(&poll.id),
                    };
                    let _ = reply.send(answer);
                });
            }
        }
    }
}
