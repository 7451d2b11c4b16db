//! One request's life after validation: placement, submission, long-polling the worker, retrying
//! on another worker when one fails before the first token, and cancelling when the client leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{ActorRef, call_t};
use runtime::ids::{RequestId, WorkerId};
use runtime::request::{Admission, GenerateRequest, PollRequest, StreamEvent, Submission, WorkerFailure};
use tokio::sync::mpsc;

use super::Gateway;
use super::error::ApiError;
use crate::router::{Placement, RouterMsg};
use crate::worker::WorkerMsg;

/// How long a request waits for a worker to appear (one restarting, say) before a 503.
const PLACEMENT_WAIT: Duration = Duration::from_secs(3);
/// How long one long-poll may wait on the worker side.
const POLL_WAIT: Duration = Duration::from_millis(1000);

/// Pause before placing a failed request again, times the attempt number.
const RETRY_PAUSE: Duration = Duration::from_millis(150);

pub type EventTx = mpsc::Sender<Result<StreamEvent, ApiError>>;

/// Why an attempt on one worker ended without finishing the request.
enum AttemptEnd {
    /// The client went away; the worker was told.
    ClientGone,
    /// Finished or failed for good; the client has been told.
    Done,
    /// The worker failed; placing the request elsewhere may work.
    Retriable(String),
}

pub fn router() -> Option<ActorRef<RouterMsg>> {
    ActorRef::<RouterMsg>::where_is(crate::node::ROUTER_NAME)
}

/// Drive `req` to its end, sending events (or one error) to `tx`.
pub async fn drive(gw: Arc<Gateway>, req: GenerateRequest, tx: EventTx) {
    let _inflight = gw.node.inflight_guard();
    let mut avoid: Vec<WorkerId> = Vec::new();
    let mut delivered = false;
    let mut attempt = 0u32;
    let hashes = gw.hasher.sequence_hashes(&req.prompt_tokens);
    loop {
        let Some(placement) = place(&req.id, &hashes, &avoid).await else {
            let _ =
                tx.send(Err(ApiError::unavailable("No worker is available to serve this request; retry later."))).await;
            return;
        };
        let worker = placement.worker_id.clone();
        let end = run_attempt(&gw, &req, &placement, &tx, &mut delivered).await;
        if let Some(r) = router() {
            let _ = r.cast(RouterMsg::Finished(req.id.clone()));
        }
        match end {
            AttemptEnd::ClientGone | AttemptEnd::Done => return,
            AttemptEnd::Retriable(why) => {
                tracing::warn!(request = %req.id, %worker, attempt, delivered, "attempt failed: {why}");
                metrics::counter!("armature_request_attempt_failures_total").increment(1);
                if delivered || attempt >= gw.config.retries {
                    let _ = tx
                        .send(Err(ApiError::unavailable(format!("The worker serving this request failed: {why}"))))
                        .await;
                    return;
                }
                attempt += 1;
                avoid.push(worker);
                // Give discovery a moment to drop a dead worker (or its restart to appear).
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
                metrics::counter!("armature_request_retries_total").increment(1);
            }
        }
    }
}

async fn place(request: &RequestId, hashes: &[u64], avoid: &[WorkerId]) -> Option<Placement> {
    let start = Instant::now();
    loop {
        if let Some(r) = router()
            && let Ok(Some(p)) = call_t!(
                r,
                |reply| RouterMsg::Place {
                    request: request.clone(),
                    hashes: hashes.to_vec(),
                    avoid: avoid.to_vec(),
                    reply
                },
                2_000
            )
        {
            return Some(p);
        }
        if start.elapsed() >= PLACEMENT_WAIT {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_attempt(
    gw: &Gateway,
    req: &GenerateRequest,
    placement: &Placement,
    tx: &EventTx,
    delivered: &mut bool,
) -> AttemptEnd {
    let timeout_ms = gw.config.worker_timeout.get().as_millis() as u64;
    let worker = &placement.worker;
    let submission = Submission {
        request: req.clone(),
        prefill_from: placement.prefill.clone(),
        onboard: placement.onboard.clone(),
    };
    match call_t!(worker, WorkerMsg::Submit, timeout_ms, submission) {
        Err(e) => return AttemptEnd::Retriable(format!("submit failed: {e}")),
        Ok(Admission::Accepted) => {}
        Ok(Admission::Unavailable(why)) => return AttemptEnd::Retriable(why),
        Ok(Admission::Overloaded { queued }) => {
            let _ = tx
                .send(Err(ApiError::overloaded(format!(
                    "The server is at capacity ({queued} requests queued on the chosen worker); retry later."
                ))))
                .await;
            return AttemptEnd::Done;
        }
        Ok(Admission::Rejected(why)) => {
            let _ = tx.send(Err(ApiError::bad_request(why, None))).await;
            return AttemptEnd::Done;
        }
    }
    loop {
        let poll = PollRequest { id: req.id.clone(), max_wait_ms: POLL_WAIT.as_millis() as u64 };
        let reply = tokio::select! {
            _ = tx.closed() => {
                let _ = worker.cast(WorkerMsg::Cancel(req.id.clone()));
                metrics::counter!("armature_requests_client_gone_total").increment(1);
                return AttemptEnd::ClientGone;
            }
            r = async { call_t!(worker, WorkerMsg::Poll, timeout_ms + POLL_WAIT.as_millis() as u64, poll) } => r,
        };
        let events = match reply {
            Ok(r) => r.events,
            Err(e) => return AttemptEnd::Retriable(format!("poll failed: {e}")),
        };
        for event in events {
            match event {
                StreamEvent::Failed(WorkerFailure::Invalid(why)) => {
                    let _ = tx.send(Err(ApiError::bad_request(why, None))).await;
                    return AttemptEnd::Done;
                }
                StreamEvent::Failed(failure) => return AttemptEnd::Retriable(failure.to_string()),
                event => {
                    let terminal = event.is_terminal();
                    if !*delivered && matches!(event, StreamEvent::Delta { .. }) {
                        *delivered = true;
                        if let Some(r) = router() {
                            let _ = r.cast(RouterMsg::FirstToken(req.id.clone()));
                        }
                    }
                    if tx.send(Ok(event)).await.is_err() {
                        if !terminal {
                            let _ = worker.cast(WorkerMsg::Cancel(req.id.clone()));
                        }
                        return AttemptEnd::ClientGone;
                    }
                    if terminal {
                        return AttemptEnd::Done;
                    }
                }
            }
        }
    }
}
