//! Disaggregated prefill, both sides. The decode worker reserves blocks for the part of the
//! prompt it lacks, asks the prefill worker for it, imports frames as they land (the prefill
//! worker streams blocks as its chunks complete, so transfer overlaps compute), registers them in
//! its prefix cache and then runs the request, which finds them there. Anything that goes wrong
//! (a dead prefill worker, a bad frame, silence past `transfer_timeout`) gives the reservation
//! back and the decode worker computes the prompt itself: the client sees no error.
//!
//! Between two workers of one process whose pools reach each other (two CUDA devices with peer
//! access), the blocks skip the frames: the decode worker offers its reserved blocks and the
//! prefill worker's engine copies into them device to device (`device_route`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu::EngineHandle;
use ractor::{ActorRef, RpcReplyPort, call_t};
use runtime::blocks::BlockHasher;
use runtime::discovery;
use runtime::ids::WorkerId;
use runtime::kv::BlockLayout;
use runtime::request::{GenerateRequest, PrefillReply, PrefillRequest};
use transport::frame::{Frame, FrameHeader};
use transport::{DataPlane, PeerAddr};

use runtime::trace::TARGET;
use tracing::Span;

use super::device_route::{self, KvRoute, Offer};
use crate::protocol::WorkerMsg;

/// Longest the decode worker waits for the prefill worker to answer at all (it also gives up
/// when frames stop for `transfer_timeout`).
const PREFILL_RPC_TIMEOUT_MS: u64 = 600_000;
/// How often a transfer checks that its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(200);
/// Frames stay within one shared-memory slot.
const MAX_FRAME_BYTES: usize = (4 << 20) - (64 << 10);

/// Why a transfer of a prompt's KV failed (the decode worker then computes the prompt itself), or
/// why a prefill for another worker did.
#[derive(Debug, thiserror::Error)]
pub enum DisaggError {
    #[error("this worker's blocks cannot move (its executor exports none)")]
    NoLayout,
    #[error("no room in the KV pool for the transfer")]
    NoRoom,
    #[error("prefill worker {0} is gone")]
    PrefillWorkerGone(WorkerId),
    #[error(transparent)]
    Engine(#[from] gpu::engine::EngineError),
    #[error("no KV frame for {0:?}")]
    Silent(Duration),
    #[error("the transfer's inbox closed")]
    InboxClosed,
    #[error("the client went away")]
    ClientGone,
    #[error("prefill worker: {0}")]
    PrefillFailed(String),
    #[error("prefill worker did not answer")]
    PrefillCall(#[source] Box<ractor::RactorErr<WorkerMsg>>),
    #[error("a frame for another model or block layout")]
    WrongModel,
    #[error("frame blocks {first}..{end} do not match the prompt")]
    WrongBlocks { first: usize, end: usize },
    #[error("the decode worker runs another model or block layout")]
    PeerModel,
    #[error("bad data-plane address {0:?}")]
    BadAddress(String, #[source] std::net::AddrParseError),
    #[error("sending a KV frame failed")]
    Send(#[source] transport::TransportError),
    #[error("the prefill stopped before its last block (cancelled, or the engine failed)")]
    Stopped,
}

/// What a worker needs to take part in disaggregated prefill.
pub struct Disagg {
    pub plane: Arc<DataPlane>,
    pub node: String,
    pub hasher: BlockHasher,
    pub transfer_timeout: Duration,
    /// Offer reserved blocks for device-to-device copies (`transport.device_copies`).
    pub device_copies: bool,
}

/// Decode side: fetch the prompt's missing blocks from `from`, then run `req` (locally from
/// scratch if the transfer failed). The request's outbox is already open.
pub async fn prefill_remotely(engine: Arc<EngineHandle>, d: Arc<Disagg>, req: GenerateRequest, from: WorkerId) {
    let started = Instant::now();
    let span = Span::current();
    let fetched = fetch(&engine, &d, &req, &from).await;
    span.record(
        "outcome",
        match &fetched {
            Ok(_) => "transferred",
            Err(_) if !engine.outputs().is_open(&req.id) => "cancelled",
            Err(_) => "fallback",
        },
    );
    match fetched {
        Ok(Fetched { received, skipped }) => {
            span.record("blocks", received);
            span.record("skipped", skipped);
            metrics::counter!("armature_disagg_requests_total", "outcome" => "transferred").increment(1);
            metrics::counter!("armature_kv_transfer_blocks_total").increment(received as u64);
            metrics::counter!("armature_kv_transfer_blocks_skipped_total").increment(skipped as u64);
            metrics::histogram!("armature_kv_transfer_seconds").record(started.elapsed().as_secs_f64());
            tracing::debug!(request = %req.id, prefill = %from, received, skipped, "prompt KV received");
        }
        Err(why) if !engine.outputs().is_open(&req.id) => {
            metrics::counter!("armature_disagg_requests_total", "outcome" => "cancelled").increment(1);
            tracing::debug!(request = %req.id, prefill = %from, "transfer stopped: {why}");
        }
        Err(why) => {
            tracing::warn!(target: TARGET, error = %why, "remote prefill failed, computing locally");
            metrics::counter!("armature_disagg_requests_total", "outcome" => "fallback").increment(1);
            tracing::warn!(request = %req.id, prefill = %from, "remote prefill failed, computing locally: {why}");
        }
    }
    run_opened(&engine, req);
}

/// Queue a request whose outbox was opened while its prompt's KV was being fetched; a client that
/// left meanwhile closed the outbox, and then there is nothing to run.
pub(crate) fn run_opened(engine: &EngineHandle, req: GenerateRequest) {
    if engine.outputs().is_open(&req.id) {
        let id = req.id.clone();
        if let Err(why) = engine.submit_opened(req) {
            engine.fail_opened(&id, runtime::request::WorkerFailure::Crashed(why.to_string()));
        }
    }
}

struct Fetched {
    received: usize,
    skipped: usize,
}

async fn fetch(
    engine: &EngineHandle,
    d: &Disagg,
    req: &GenerateRequest,
    from: &WorkerId,
) -> Result<Fetched, DisaggError> {
    let layout = engine.block_layout().ok_or(DisaggError::NoLayout)?;
    let bs = d.hasher.block_size();
    let hashes = d.hasher.reusable_hashes(&req.prompt_tokens);
    let usable = hashes.len();
    let reservation = engine.reserve(hashes.clone()).await.ok_or(DisaggError::NoRoom)?;
    let have = reservation.cached.len();
    if have == usable {
        engine.abort(reservation);
        return Ok(Fetched { received: 0, skipped: have });
    }
    let fresh = reservation.fresh.clone();
    let transfer: u64 = rand::random();
    let inbox = d.plane.expect(transfer);
    let request = PrefillRequest {
        id: req.id.clone(),
        transfer,
        tokens: req.prompt_tokens[..usable * bs].to_vec(),
        skip: have as u32,
        to_node: d.node.clone(),
        to_addr: d.plane.local_addr().to_string(),
        model: engine.model_fingerprint(),
        layout,
        trace: runtime::trace::outgoing(&Span::current(), req.trace.as_ref()),
    };
    let worker = discovery::worker(from).map(ActorRef::<WorkerMsg>::from);
    let Some(worker) = worker else {
        engine.abort(reservation);
        return Err(DisaggError::PrefillWorkerGone(from.clone()));
    };
    // Only a prefill worker of this process can take the offer (see `device_route`).
    let offer = engine
        .device_pool()
        .filter(|_| d.device_copies)
        .map(|pool| device_route::offer(transfer, pool.clone(), have, fresh.clone()));
    Span::current().record("route", if offer.is_some() { "offered device copies" } else { "frames" });
    let expected = Expected { hashes: &hashes, fresh: &fresh, have, layout };
    let received = receive(engine, d, inbox, request, &worker, expected, offer.as_ref()).await;
    // No copy into the reserved blocks runs once the offer is gone: then they may be reused.
    drop(offer);
    match received {
        Ok(n) => {
            if !engine.commit(reservation, hashes).await {
                return Err(gpu::engine::EngineError::Gone.into());
            }
            Ok(Fetched { received: n, skipped: have })
        }
        Err(why) => {
            engine.abort(reservation);
            // Whatever it still computes for this request is wasted: stop it.
            let _ = worker.cast(WorkerMsg::Cancel(req.id.clone()));
            Err(why)
        }
    }
}

/// What a transfer fills: the prompt's reusable blocks' `hashes`, of which the decode worker
/// holds the first `have` and reserved `fresh` for the rest.
#[derive(Clone, Copy)]
struct Expected<'a> {
    hashes: &'a [u64],
    fresh: &'a [gpu::pool::BlockId],
    have: usize,
    layout: BlockLayout,
}

/// Ask for the prefill and wait until every reserved block is filled, by frames or by device
/// copies (whichever the prefill worker chose); a transfer silent for `transfer_timeout` fails.
async fn receive(
    engine: &EngineHandle,
    d: &Disagg,
    mut inbox: transport::Inbox,
    request: PrefillRequest,
    worker: &ActorRef<WorkerMsg>,
    x: Expected<'_>,
    offer: Option<&Offer>,
) -> Result<usize, DisaggError> {
    let (model, id) = (request.model, request.id.clone());
    let worker = worker.clone();
    let rpc = async move { call_t!(worker, WorkerMsg::Prefill, PREFILL_RPC_TIMEOUT_MS, request) };
    // Every so often: is the client still there?
    let mut check = tokio::time::interval(CLIENT_CHECK);
    let silence = tokio::time::sleep(d.transfer_timeout);
    tokio::pin!(rpc, silence);
    let mut progress = offer.map(|o| o.sink().progress());
    let need = x.hashes.len() - x.have;
    let mut got = vec![false; need];
    let (mut received, mut copied) = (0, 0);
    let mut answered = false;
    while received < need && copied < need {
        tokio::select! {
            frame = inbox.recv() => {
                let frame = frame.ok_or(DisaggError::InboxClosed)?;
                silence.as_mut().reset(tokio::time::Instant::now() + d.transfer_timeout);
                let (first, k) = check_frame(&frame, model, x.layout, x.hashes, x.have)?;
                let at = first - x.have;
                if got[at..at + k].iter().any(|&g| g) {
                    continue; // a duplicate
                }
                engine.import(x.fresh[at..at + k].to_vec(), frame.body).await?;
                got[at..at + k].iter_mut().for_each(|g| *g = true);
                received += k;
            }
            changed = async {
                match progress.as_mut() {
                    Some(p) => p.changed().await.map(|()| *p.borrow_and_update()),
                    None => std::future::pending().await,
                }
            } => {
                match changed {
                    Ok(n) => {
                        copied = n;
                        silence.as_mut().reset(tokio::time::Instant::now() + d.transfer_timeout);
                    }
                    // The sink is the offer's: it outlives this loop.
                    Err(_) => progress = None,
                }
            }
            () = &mut silence => return Err(DisaggError::Silent(d.transfer_timeout)),
            _ = check.tick() => {
                if !engine.outputs().is_open(&id) {
                    return Err(DisaggError::ClientGone);
                }
            }
            reply = &mut rpc, if !answered => {
                answered = true;
                match reply {
                    // Every copy completed before the reply; frames may still be on their way.
                    Ok(PrefillReply::Sent { .. }) => {
                        copied = progress.as_ref().map_or(copied, |p| *p.borrow());
                    }
                    Ok(PrefillReply::Failed(why)) => return Err(DisaggError::PrefillFailed(why)),
                    Err(e) => return Err(DisaggError::PrefillCall(Box::new(e))),
                }
            }
        }
    }
    if copied > 0 {
        let bytes = (copied * x.layout.block_bytes()) as u64;
        metrics::counter!("armature_transfer_bytes_total", "direction" => "in", "path" => "device").increment(bytes);
    }
    Ok(received.max(copied))
}

/// Check a frame against the transfer; (index of its first block, blocks).
fn check_frame(
    frame: &Frame,
    model: u64,
    layout: BlockLayout,
    hashes: &[u64],
    have: usize,
) -> Result<(usize, usize), DisaggError> {
    let h = &frame.header;
    if h.model != model || BlockLayout::from(h.layout) != layout {
        return Err(DisaggError::WrongModel);
    }
    let (first, k) = (h.first_block as usize, h.hashes.len());
    if first < have || first + k > hashes.len() || h.hashes[..] != hashes[first..first + k] {
        return Err(DisaggError::WrongBlocks { first, end: first + k });
    }
    Ok((first, k))
}

/// Prefill side: compute the blocks `request` asks for and stream them to the decode worker as
/// they complete.
pub async fn serve_prefill(
    engine: Arc<EngineHandle>,
    plane: Arc<DataPlane>,
    request: PrefillRequest,
    reply: RpcReplyPort<PrefillReply>,
) {
    let id = request.id.clone();
    let outcome = stream_prefill(&engine, &plane, request).await;
    let label = if outcome.is_ok() { "sent" } else { "failed" };
    metrics::counter!("armature_prefill_remote_total", "outcome" => label).increment(1);
    let span = Span::current();
    let answer = match outcome {
        Ok(blocks) => {
            span.record("blocks", blocks);
            metrics::counter!("armature_kv_transfer_blocks_sent_total").increment(u64::from(blocks));
            PrefillReply::Sent { blocks }
        }
        Err(why) => {
            span.record("otel.status_code", "ERROR");
            span.record("error", tracing::field::display(&why));
            tracing::warn!(request = %id, "prefill for another worker failed: {why}");
            engine.cancel(&id);
            PrefillReply::Failed(why.to_string())
        }
    };
    let _ = reply.send(answer);
}

async fn stream_prefill(engine: &EngineHandle, plane: &Arc<DataPlane>, r: PrefillRequest) -> Result<u32, DisaggError> {
    let layout = engine.block_layout().ok_or(DisaggError::NoLayout)?;
    if layout != r.layout || engine.model_fingerprint() != r.model {
        return Err(DisaggError::PeerModel);
    }
    let addr = r.to_addr.parse().map_err(|e| DisaggError::BadAddress(r.to_addr.clone(), e))?;
    let peer = PeerAddr { node: r.to_node.clone(), addr };
    let per_frame = (MAX_FRAME_BYTES / layout.block_bytes()).max(1);
    let device = match device_route::choose(engine.device_pool(), device_route::claim(r.transfer)) {
        KvRoute::Device(sink) => {
            tracing::debug!(request = %r.id, to = %sink.pool().place(), "prefill copies its blocks device to device");
            Some(sink)
        }
        KvRoute::Frames => None,
    };
    Span::current().record("route", if device.is_some() { "device" } else { "frames" });
    let mut chunks = engine.prefill(r.id.clone(), r.tokens, r.skip as usize, device);
    let mut sent = 0u32;
    while let Some(chunk) = chunks.recv().await {
        let n = chunk.hashes.len();
        let bb = layout.block_bytes();
        if chunk.copied {
            // Already in the decode worker's pool.
        } else if n <= per_frame {
            let header = FrameHeader::for_body(
                r.transfer,
                r.model,
                layout,
                chunk.first as u32,
                chunk.hashes,
                chunk.done,
                &chunk.data,
            );
            plane.send(&peer, Frame { header, body: chunk.data }).await.map_err(DisaggError::Send)?;
        } else {
            for start in (0..n).step_by(per_frame) {
                let end = (start + per_frame).min(n);
                let body = plane.pool().copy_of(&chunk.data[start * bb..end * bb]);
                let last = chunk.done && end == n;
                let hashes = chunk.hashes[start..end].to_vec();
                let header = FrameHeader::for_body(
                    r.transfer,
                    r.model,
                    layout,
                    (chunk.first + start) as u32,
                    hashes,
                    last,
                    &body,
                );
                plane.send(&peer, Frame { header, body }).await.map_err(DisaggError::Send)?;
            }
        }
        sent += n as u32;
        tracing::info!(target: TARGET, first = chunk.first, blocks = n, copied = chunk.copied, "kv blocks sent");
        if chunk.done {
            return Ok(sent);
        }
    }
    Err(DisaggError::Stopped)
}
