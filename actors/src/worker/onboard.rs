//! The worker's side of the cache tiers: offloading what its engine copied out to the node's
//! tier, and onboarding a prompt's leading blocks from a tier (its own node's, read directly; or
//! another node's, sent over the data plane) when the router found them there and moving them
//! is cheaper than computing them. Onboarded blocks are imported into reserved pool blocks and
//! registered, so the request that follows finds them in the prefix cache. Whatever goes wrong,
//! the worker computes the prompt itself: the client never sees a tier's failure.

use std::sync::Arc;
use std::time::Duration;

use gpu::EngineHandle;
use ractor::{ActorRef, call_t};
use runtime::blocks::BlockHasher;
use runtime::config::{CacheSection, TierLink};
use runtime::discovery;
use runtime::ids::WorkerId;
use runtime::kv::{OnboardHint, TierKind, TierSendRequest};
use runtime::request::GenerateRequest;
use transport::DataPlane;

use policy::cache::onboard_pays;

use crate::protocol::{TierBlock, TierBlocks, TierMsg, TierRead};

/// Longest a worker waits for a tier to answer.
const TIER_RPC_TIMEOUT_MS: u64 = 30_000;

/// Why onboarding from a tier failed (the worker then computes the prompt itself).
#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error("this worker's blocks cannot move (its executor exports none)")]
    NoLayout,
    #[error("no room in the KV pool")]
    NoRoom,
    #[error("tier {0} is gone")]
    TierGone(WorkerId),
    #[error("tier {0} did not answer")]
    TierCall(WorkerId, #[source] Box<ractor::RactorErr<TierMsg>>),
    #[error("this node has no data plane for another node's tier")]
    NoPlane,
    #[error("no frame from the tier for {0:?}")]
    Silent(Duration),
    #[error("the transfer's inbox closed")]
    InboxClosed,
    #[error("a frame that does not belong to this transfer")]
    StrayFrame,
    #[error(transparent)]
    Engine(#[from] gpu::engine::EngineError),
}

/// Longest a remote tier's transfer may go without a frame.
const TIER_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker needs to use its node's cache tiers.
pub struct TierAccess {
    pub node: String,
    pub hasher: BlockHasher,
    pub cache: CacheSection,
    /// When the engine copies blocks out: `cache.offload` if this node has a tier, else never.
    pub offload: runtime::config::OffloadMode,
    /// For blocks from other nodes' tiers.
    pub plane: Option<Arc<DataPlane>>,
}

impl TierAccess {
    /// The tier this node's workers offload into: host if there is one, else disk.
    fn offload_target(&self) -> Option<ActorRef<TierMsg>> {
        [TierKind::Host, TierKind::Disk]
            .into_iter()
            .find_map(|k| discovery::tier(&k.source(&self.node)))
            .map(ActorRef::from)
    }

    /// Hand what the engine copied out of its pool to the node's tier.
    pub fn offload(&self, engine: &EngineHandle) {
        let blocks = engine.kv_feed().take_offloaded();
        let Some(layout) = engine.block_layout() else { return };
        if blocks.is_empty() {
            return;
        }
        let Some(tier) = self.offload_target() else { return };
        metrics::counter!("armature_cache_offloaded_blocks_total").increment(blocks.len() as u64);
        let blocks =
            blocks.into_iter().map(|b| TierBlock { hash: b.hash, parent: b.parent, reuses: 0, data: b.data }).collect();
        let _ = tier.cast(TierMsg::Offload(TierBlocks { model: engine.model_fingerprint(), layout, blocks }));
    }

    fn link(&self, hint: &OnboardHint) -> &TierLink {
        match hint.kind {
            _ if hint.source.node != self.node => &self.cache.remote,
            TierKind::Disk => &self.cache.disk,
            _ => &self.cache.host,
        }
    }
}

/// Onboard what `hint` names, then run `req` (the request's outbox is already open).
pub async fn onboard_then_run(
    engine: Arc<EngineHandle>,
    access: Arc<TierAccess>,
    req: GenerateRequest,
    hint: OnboardHint,
) {
    let tier = if hint.source.node == access.node { hint.kind.name() } else { "remote" };
    let onboarded = onboard(&engine, &access, &req, &hint).await;
    let span = tracing::Span::current();
    match &onboarded {
        Ok(0) => span.record("outcome", "skipped"),
        Ok(n) => span.record("outcome", "onboarded").record("blocks", n),
        Err(_) => span.record("outcome", "failed"),
    };
    match onboarded {
        Ok(0) => {
            metrics::counter!("armature_cache_onboard_total", "tier" => tier, "outcome" => "skipped").increment(1);
        }
        Ok(n) => {
            metrics::counter!("armature_cache_onboard_total", "tier" => tier, "outcome" => "onboarded").increment(1);
            metrics::counter!("armature_cache_onboarded_blocks_total", "tier" => tier).increment(n as u64);
            tracing::debug!(request = %req.id, from = %hint.source, blocks = n, "prompt blocks onboarded");
        }
        Err(why) => {
            metrics::counter!("armature_cache_onboard_total", "tier" => tier, "outcome" => "failed").increment(1);
            tracing::warn!(request = %req.id, from = %hint.source, "onboarding failed, computing the prompt: {why}");
        }
    }
    super::disagg::run_opened(&engine, req);
}

/// Fetch and import the blocks; how many were onboarded.
async fn onboard(
    engine: &EngineHandle,
    access: &TierAccess,
    req: &GenerateRequest,
    hint: &OnboardHint,
) -> Result<usize, OnboardError> {
    let layout = engine.block_layout().ok_or(OnboardError::NoLayout)?;
    let bs = access.hasher.block_size();
    let usable = access.hasher.reusable_blocks(req.prompt_tokens.len()).min(hint.blocks as usize);
    let hashes = access.hasher.sequence_hashes(&req.prompt_tokens[..usable * bs]);
    let mut reservation = engine.reserve(hashes.clone()).await.ok_or(OnboardError::NoRoom)?;
    let have = reservation.cached.len();
    let want = usable - have;
    if !onboard_pays(want, layout.block_bytes(), bs, access.link(hint), access.cache.prefill_tokens_per_s) {
        engine.abort(reservation);
        return Ok(0);
    }
    let model = engine.model_fingerprint();
    let wanted = &hashes[have..];
    let fetched = if hint.source.node == access.node {
        read_local(hint, wanted, model, layout).await
    } else {
        read_remote(access, hint, wanted, model, layout).await
    };
    let blocks = match fetched {
        Ok(b) => b,
        Err(why) => {
            engine.abort(reservation);
            return Err(why);
        }
    };
    tracing::debug!(request = %req.id, have, usable, hint = hint.blocks, fetched = blocks.len(), "onboarding");
    // Only the leading blocks that came, in order, are kept.
    let got =
        blocks.iter().zip(wanted).take_while(|(b, h)| b.hash == **h && b.data.len() == layout.block_bytes()).count();
    let rest = reservation.fresh.split_off(got);
    engine.abort(gpu::engine::Reservation { cached: Vec::new(), fresh: rest });
    if got == 0 {
        engine.abort(reservation);
        return Ok(0);
    }
    let mut all = Vec::with_capacity(got * layout.block_bytes());
    blocks[..got].iter().for_each(|b| all.extend_from_slice(&b.data));
    let body = runtime::buffers::Buffer::unpooled(&all);
    if let Err(why) = engine.import(reservation.fresh.clone(), body).await {
        engine.abort(reservation);
        return Err(why.into());
    }
    if !engine.commit(reservation, hashes[..have + got].to_vec()).await {
        return Err(gpu::engine::EngineError::Gone.into());
    }
    Ok(got)
}

async fn read_local(
    hint: &OnboardHint,
    hashes: &[u64],
    model: u64,
    layout: runtime::kv::BlockLayout,
) -> Result<Vec<TierBlock>, OnboardError> {
    let tier = tier_of(hint)?;
    let read = TierRead { hashes: hashes.to_vec(), model, layout };
    let blocks = call_t!(tier, TierMsg::Read, TIER_RPC_TIMEOUT_MS, read)
        .map_err(|e| OnboardError::TierCall(hint.source.clone(), Box::new(e)))?;
    Ok(blocks.blocks)
}

/// Ask another node's tier to send the blocks over the data plane, then collect its frames.
async fn read_remote(
    access: &TierAccess,
    hint: &OnboardHint,
    hashes: &[u64],
    model: u64,
    layout: runtime::kv::BlockLayout,
) -> Result<Vec<TierBlock>, OnboardError> {
    let plane = access.plane.as_ref().ok_or(OnboardError::NoPlane)?;
    let tier = tier_of(hint)?;
    let transfer: u64 = rand::random();
    let mut inbox = plane.expect(transfer);
    let request = TierSendRequest {
        hashes: hashes.to_vec(),
        transfer,
        to_node: access.node.clone(),
        to_addr: plane.local_addr().to_string(),
        model,
        layout,
    };
    let sent = call_t!(tier, TierMsg::Send, TIER_RPC_TIMEOUT_MS, request)
        .map_err(|e| OnboardError::TierCall(hint.source.clone(), Box::new(e)))?;
    let n = sent.blocks as usize;
    let mut blocks: Vec<Option<TierBlock>> = vec![None; n];
    for _ in 0..n {
        let frame = tokio::time::timeout(TIER_FRAME_TIMEOUT, inbox.recv())
            .await
            .map_err(|_| OnboardError::Silent(TIER_FRAME_TIMEOUT))?
            .ok_or(OnboardError::InboxClosed)?;
        let h = &frame.header;
        let i = h.first_block as usize;
        if h.model != model || runtime::kv::BlockLayout::from(h.layout) != layout || i >= n || h.hashes.len() != 1 {
            return Err(OnboardError::StrayFrame);
        }
        blocks[i] = Some(TierBlock { hash: h.hashes[0], parent: None, reuses: 0, data: frame.body.to_vec() });
    }
    Ok(blocks.into_iter().map_while(|b| b).collect())
}

/// The tier a hint names, if discovery shows it.
fn tier_of(hint: &OnboardHint) -> Result<ActorRef<TierMsg>, OnboardError> {
    discovery::tier(&hint.source).map(ActorRef::from).ok_or_else(|| OnboardError::TierGone(hint.source.clone()))
}
