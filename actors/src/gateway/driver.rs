//! The pump around one request's `policy::lifecycle::Lifecycle`: it carries out what the
//! lifecycle says (ask the router, submit to a worker, long-poll its output, deliver to the client,
//! cancel, tell the router) and feeds back what happened (placements, admissions, events, failed
//! calls, missed leases, the client leaving). Every rule about retries, migrations, stale output
//! and usage is in the lifecycle; this file only does IO.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy::lifecycle::{Failure, Lifecycle, LifecycleConfig, Note, Output};
use runtime::ids::{RequestId, WorkerId};
use runtime::request::{GenerateRequest, PollRequest, StreamEvent, Submission};
use runtime::trace::TARGET;
use tokio::sync::mpsc;
use tracing::{Instrument, Span, field};

use super::Gateway;
use super::access::{Access, Outcome};
use super::error::ApiError;
use crate::protocol::{Placement, RouterHandle};

/// How long one long-poll may wait on the worker side.
const POLL_WAIT: Duration = Duration::from_millis(1000);

/// How often a request waiting on a worker checks that the worker's node still holds its lease.
const LEASE_CHECK: Duration = Duration::from_millis(250);

/// Longest one placement call to the router may take.
const PLACE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the driver tells the HTTP side about its request.
#[derive(Debug)]
pub enum Update {
    /// A worker took it (it may wait in that worker's queue): a stream can start now.
    Admitted,
    Event(StreamEvent),
    /// It failed, in the client's terms.
    Error(ApiError),
}

pub type EventTx = mpsc::Sender<Update>;

/// The lifecycle's settings from `[gateway]`.
pub fn lifecycle_config(gw: &Gateway) -> LifecycleConfig {
    LifecycleConfig::new(gw.config.retries, gw.config.migrations).with_queue_timeout(gw.config.queue_timeout.get())
}

fn api_error(failure: Failure) -> ApiError {
    match &failure {
        Failure::Unavailable(_) | Failure::Queued { .. } => ApiError::unavailable(failure.to_string()),
        Failure::Overloaded { .. } => ApiError::overloaded(failure.to_string()),
        Failure::Invalid(why) => ApiError::bad_request(why.clone(), None),
    }
}

/// Drive `req` to its end, sending events (or one error) to `tx`; the access line at the end.
/// Its spans (`runtime::trace`) are children of `access.span`: one per placement
/// (`router.place`), per attempt (`gateway.attempt`, whose context the worker's spans join),
/// and the stream from the first token on (`gateway.stream`).
pub async fn drive(gw: Arc<Gateway>, req: GenerateRequest, tx: EventTx, mut access: Access) {
    let _inflight = gw.node.inflight_guard();
    let epoch = Instant::now();
    let now = || epoch.elapsed();
    let id = req.id.clone();
    let mut life: Lifecycle<WorkerId> = Lifecycle::new(req, lifecycle_config(&gw), now());
    // The workers placed on, by id, to submit to and cancel on.
    let mut placements: HashMap<WorkerId, Placement> = HashMap::new();
    // The worker of the latest attempt, for the logs (the lifecycle has moved on when it notes a failure).
    let mut last_worker: Option<WorkerId> = None;
    let generate = access.span.clone();
    // The span of the attempt running now, and of the stream once a token came.
    let (mut attempt_span, mut stream_span): (Option<Span>, Option<Span>) = (None, None);
    loop {
        while let Some(output) = life.poll() {
            match output {
                Output::Place { avoid } => {
                    // For the router only: the worker hashes the prompt again as it admits it,
                    // because it trusts no hashes from another node and a migrated prompt
                    // changes (docs/design.md#block-hashes).
                    let hashes = gw.hasher.sequence_hashes(&life.request().prompt_tokens);
                    let span = tracing::info_span!(target: TARGET, parent: &generate, "router.place",
                        prompt_blocks = hashes.len(), avoid = avoid.len(), worker = field::Empty,
                        prefill = field::Empty, onboard = field::Empty);
                    let placement =
                        place(&life.request().id, hashes, avoid, gw.model_identity).instrument(span.clone()).await;
                    if let Some(p) = &placement {
                        span.record("worker", field::display(&p.worker.id));
                        if let Some(from) = &p.prefill {
                            span.record("prefill", field::display(from));
                        }
                        span.record("onboard", p.onboard.is_some());
                    }
                    let worker = placement.as_ref().map(|p| p.worker.id.clone());
                    if let Some(p) = placement {
                        placements.insert(p.worker.id.clone(), p);
                    }
                    life.handle_placed(now(), worker);
                }
                Output::Submit { worker, .. } => {
                    last_worker = Some(worker.clone());
                    let Some(p) = placements.get(&worker) else {
                        life.handle_worker_failed(now(), &worker, "no placement for this worker");
                        continue;
                    };
                    // A prompt being scored is computed whole where it decodes: blocks from a
                    // prefill worker or a cache tier would say nothing of its logits.
                    let whole = life.request().sampling.prompt_logprobs.is_some();
                    access.placed(&worker, p.prefill.as_ref().filter(|_| !whole));
                    let span = tracing::info_span!(target: TARGET, parent: &generate, "gateway.attempt",
                        otel.kind = "client", worker = %worker, attempt = life.attempt(), admission = field::Empty);
                    let mut request = life.request().clone();
                    request.trace = runtime::trace::outgoing(&span, request.trace.as_ref());
                    let submission = Submission {
                        request,
                        prefill_from: p.prefill.clone().filter(|_| !whole),
                        onboard: p.onboard.clone().filter(|_| !whole),
                    };
                    let submitted = p.worker.submit(submission, gw.config.worker_timeout.get()).await;
                    span.record("admission", field::debug(&submitted.as_ref().map_err(|_| "no answer")));
                    attempt_span = Some(span);
                    match submitted {
                        Ok(admission) => life.handle_admission(now(), admission),
                        Err(e) => life.handle_worker_failed(now(), &worker, format!("submit failed: {e}")),
                    }
                }
                Output::Admitted { .. } => {
                    if tx.send(Update::Admitted).await.is_err() {
                        life.handle_client_gone(now());
                    }
                }
                Output::FirstToken { .. } => {
                    access.first_token.get_or_insert_with(Instant::now);
                    stream_span.get_or_insert_with(
                        || tracing::info_span!(target: TARGET, parent: &generate, "gateway.stream"),
                    );
                    if let Some(r) = RouterHandle::local() {
                        r.first_token(id.clone());
                    }
                }
                Output::Deliver(event) => {
                    if let StreamEvent::Finished { reason, usage } = &event {
                        access.usage = Some(*usage);
                        access.ended(Outcome::Finished(*reason));
                    }
                    if tx.send(Update::Event(event)).await.is_err() {
                        life.handle_client_gone(now());
                    }
                }
                Output::Cancel { worker, .. } => {
                    if let Some(p) = placements.get(&worker) {
                        p.worker.cancel(id.clone());
                    }
                }
                Output::Ended { .. } => {
                    attempt_span = None;
                    if let Some(r) = RouterHandle::local() {
                        r.finished(id.clone());
                    }
                }
                Output::Fail(failure) => {
                    access.ended(Outcome::of_failure(&failure));
                    let _ = tx.send(Update::Error(api_error(failure))).await;
                }
                Output::Note(note) => {
                    if matches!(note, Note::ClientGone) {
                        access.ended(Outcome::ClientGone);
                    }
                    if let Note::AttemptFailed { why, .. } | Note::Migration { why } = &note {
                        let on = attempt_span.as_ref().unwrap_or(&generate);
                        let migrates = matches!(note, Note::Migration { .. });
                        tracing::warn!(target: TARGET, parent: on, why = %why, migrates, "attempt failed");
                    }
                    record(&id, last_worker.as_ref(), life.migrations(), note);
                }
                Output::Done => {
                    let tag = life.request().tag.as_deref();
                    access.log(&id, tag, life.attempt() + 1, life.migrations(), life.delivered(), Instant::now());
                    return;
                }
            }
        }
        let deadline = life.poll_timeout();
        if let Some(deadline) = deadline.filter(|_| life.running().is_none()) {
            let wait = deadline.saturating_sub(now());
            tokio::select! {
                _ = tx.closed() => life.handle_client_gone(now()),
                _ = tokio::time::sleep(wait) => life.handle_timeout(now()),
            }
            continue;
        }
        // Every output is carried out and nothing is timed: the request runs on a worker.
        let running = life.running().map(|(w, a)| (w.clone(), a));
        let Some(((worker, attempt), placement)) =
            running.and_then(|(w, a)| placements.get(&w).cloned().map(|p| ((w, a), p)))
        else {
            // Unreachable while the lifecycle keeps its calling order; never leave a client hanging.
            tracing::error!(request = %id, "request stopped with nothing in flight");
            let _ = tx.send(Update::Error(ApiError::unavailable("The request could not be run; retry later."))).await;
            access.ended(Outcome::Failed("unavailable"));
            access.log(
                &id,
                life.request().tag.as_deref(),
                life.attempt() + 1,
                life.migrations(),
                life.delivered(),
                Instant::now(),
            );
            return;
        };
        let until = deadline.map(|d| epoch + d);
        match poll_worker(&gw, &placement, &id, &tx, until).await {
            Polled::Events(events) => {
                for event in events {
                    life.handle_event(now(), &worker, attempt, event);
                }
            }
            Polled::Failed(why) => life.handle_worker_failed(now(), &worker, why),
            Polled::ClientGone => life.handle_client_gone(now()),
            Polled::Deadline => life.handle_timeout(now()),
        }
    }
}

/// Metrics and logs for what the lifecycle noted.
fn record(id: &RequestId, worker: Option<&WorkerId>, migrations: u32, note: Note) {
    let worker = worker.map(ToString::to_string).unwrap_or_default();
    match note {
        Note::AttemptFailed { attempt, why } => {
            tracing::warn!(request = %id, %worker, attempt, "attempt failed: {why}");
            metrics::counter!("armature_request_attempt_failures_total").increment(1);
        }
        Note::Retry => metrics::counter!("armature_request_retries_total").increment(1),
        Note::Migration { why } => {
            tracing::warn!(request = %id, %worker, migrations, "worker failed mid-stream: {why}");
            metrics::counter!("armature_request_migrations_total").increment(1);
        }
        Note::ClientGone => metrics::counter!("armature_requests_client_gone_total").increment(1),
        Note::Stale => metrics::counter!("armature_request_stale_events_total").increment(1),
    }
}

/// One placement call to the router (the lifecycle decides whether and when to ask again).
async fn place(request: &RequestId, hashes: Vec<u64>, avoid: Vec<WorkerId>, model: u64) -> Option<Placement> {
    let router = RouterHandle::local()?;
    router.place(request.clone(), hashes, avoid, model, PLACE_TIMEOUT).await.ok().flatten()
}

enum Polled {
    Events(Vec<StreamEvent>),
    Failed(String),
    ClientGone,
    /// The lifecycle's deadline (the queue timeout) came first.
    Deadline,
}

/// One long-poll of the worker, watching the client, the worker node's lease and the lifecycle's
/// deadline (`until`) meanwhile.
async fn poll_worker(
    gw: &Gateway,
    placement: &Placement,
    id: &RequestId,
    tx: &EventTx,
    until: Option<Instant>,
) -> Polled {
    let poll = PollRequest { id: id.clone(), max_wait_ms: POLL_WAIT.as_millis() as u64 };
    let call = placement.worker.poll(poll, gw.config.worker_timeout.get());
    tokio::pin!(call);
    // The poll stays pending across lease checks: dropping it could lose the events it takes.
    let mut lease = tokio::time::interval(LEASE_CHECK);
    let deadline = async {
        match until {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = tx.closed() => return Polled::ClientGone,
            // Dropping the pending poll loses nothing here: the lifecycle cancels the attempt.
            _ = &mut deadline => return Polled::Deadline,
            r = &mut call => return match r {
                Ok(reply) => Polled::Events(reply.events),
                Err(e) => Polled::Failed(format!("poll failed: {e}")),
            },
            _ = lease.tick() => {
                let node = &placement.worker.id.node;
                if !gw.node.view.is_alive(node) {
                    // A stopped or partitioned node keeps its connection open; its lease is what
                    // says it is gone.
                    return Polled::Failed(format!("node {node} missed its lease"));
                }
            }
        }
    }
}
