//! The continuous-batching engine core. Each step it plans a batch under a token budget: running
//! sequences first, oldest first (a decode needs one token, a prefill takes a chunk of what is
//! left; only the youngest can be partway through its prompt, as the budget ran out there), then
//! waiting ones: those whose prompt is already in the pool (blocks that landed from a prefill
//! worker, a cached prefix) first, as each costs one token, then the rest in arrival order,
//! reusing cached prefix blocks. When blocks run out, the youngest running sequence is preempted:
//! its blocks are released (the full ones stay cached) and it is recomputed later. After the
//! forward pass it registers newly full blocks, samples, detokenizes, applies stop strings and
//! limits, and reports stream events.
//! No threads or clocks inside; `thread.rs` drives it.

mod error;
mod sequence;
mod thread;

use std::collections::VecDeque;
use std::sync::Arc;

use runtime::blocks::BlockHasher;
use runtime::ids::RequestId;
use runtime::kv::KvEventRecord;
use runtime::request::{FinishReason, GenerateRequest, StreamEvent, WorkerFailure};

use crate::executor::{Executor, ExecutorError, Pick, SequenceView};
use crate::pool::{BlockPool, PoolStats};
use crate::tokenizer::Tokenizer;
use sequence::{Drawn, PrefillState, Sequence};

/// Blocks a worker set aside for KV arriving from another worker: the prompt's leading blocks it
/// already holds (referenced until commit or abort) and blank blocks for the rest, in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    pub cached: Vec<crate::pool::BlockId>,
    pub fresh: Vec<crate::pool::BlockId>,
}

/// Blocks of a prefill for another worker that just became complete (referenced until
/// `release_prefilled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefilled {
    pub id: RequestId,
    /// Index of the first of `blocks` in the sequence.
    pub first: usize,
    pub blocks: Vec<crate::pool::BlockId>,
    pub hashes: Vec<u64>,
    /// The prefill is complete.
    pub done: bool,
}

pub use error::{EngineError, RequestError};
pub use thread::{EngineHandle, KvFeed, Outputs, PrefillChunk, Taken};

/// A registered block copied out of the pool for the cache tiers (write-back: as it was
/// evicted; write-through: as it was registered). `data` is empty when the executor cannot
/// export blocks (the simulator's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffloadedBlock {
    pub hash: u64,
    pub parent: Option<u64>,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineLimits {
    pub max_batch: usize,
    pub max_queue: usize,
    pub context_length: u32,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub kv_blocks: usize,
    /// Most tokens computed in one step: one per decoding sequence plus prefill chunks.
    pub max_batch_tokens: usize,
}

/// Counters since the engine started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Tokens whose KV was computed (prompt, recomputation, and each decode step's input).
    pub computed_tokens: u64,
    /// Prompt tokens whose KV came from the prefix cache instead.
    pub cached_tokens: u64,
    pub preemptions: u64,
    /// Constrained sequences' token masks computed, and the time they took (on the mask thread,
    /// beside the forward pass).
    pub masks: u64,
    pub mask_micros: u64,
    pub pool: PoolStats,
}

pub struct Engine {
    executor: Box<dyn Executor>,
    tokenizer: Arc<dyn Tokenizer>,
    /// Compiles requests' constraints against the model's vocabulary.
    grammars: Arc<crate::constraint::Grammars>,
    limits: EngineLimits,
    pool: BlockPool,
    hasher: BlockHasher,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    stats: EngineStats,
    prefilled: Vec<Prefilled>,
    offloaded: Vec<OffloadedBlock>,
}

/// One sequence's share of a step: compute its tokens up to `end`.
struct Planned {
    index: usize,
    end: usize,
}

/// Run a batch: tokens picked by the executor where `picks` is given, else logits to sample.
fn run_batch(
    executor: &mut dyn Executor,
    views: &[SequenceView<'_>],
    picks: Option<Vec<Option<Pick>>>,
) -> Result<Vec<Option<StepOutput>>, ExecutorError> {
    if let Some(picks) = picks
        && let Some(tokens) = executor.forward_picked(views, &picks)
    {
        return Ok(tokens?.into_iter().map(|t| t.map(StepOutput::Token)).collect());
    }
    Ok(executor.forward(views)?.into_iter().map(|l| l.map(StepOutput::Logits)).collect())
}

/// What the executor gave for one sequence of a step.
enum StepOutput {
    Logits(Vec<f32>),
    Token(u32),
}

impl Engine {
    pub fn new(executor: Box<dyn Executor>, tokenizer: Arc<dyn Tokenizer>, limits: EngineLimits) -> Self {
        Self {
            executor,
            grammars: Arc::new(crate::constraint::Grammars::new(tokenizer.clone())),
            tokenizer,
            pool: BlockPool::new(limits.kv_blocks),
            hasher: BlockHasher::new(limits.block_size),
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stats: EngineStats::default(),
            prefilled: Vec::new(),
            offloaded: Vec::new(),
        }
    }

    /// Copy blocks out for the cache tiers as the pool evicts them (write-back) or registers them
    /// (write-through); `take_offloaded` hands them over.
    pub fn set_offload(&mut self, mode: runtime::config::OffloadMode) {
        use runtime::config::OffloadMode;
        self.pool.set_watch(match mode {
            OffloadMode::WriteBack => crate::pool::Watch::Evicted,
            OffloadMode::WriteThrough => crate::pool::Watch::Registered,
            OffloadMode::Off => crate::pool::Watch::Nothing,
        });
    }

    /// Blocks copied out since the last call.
    pub fn take_offloaded(&mut self) -> Vec<OffloadedBlock> {
        std::mem::take(&mut self.offloaded)
    }

    /// Copy the blocks the pool watched out of the executor's memory, before it is written again.
    fn collect_offload(&mut self) {
        let watched = self.pool.take_watched();
        if watched.is_empty() {
            return;
        }
        let bytes = self.block_layout().map_or(0, |l| l.block_bytes());
        for w in watched {
            let mut data = vec![0u8; bytes];
            if bytes > 0 && self.executor.export_block(w.id, &mut data).is_err() {
                continue;
            }
            self.offloaded.push(OffloadedBlock { hash: w.hash, parent: w.parent, data });
        }
    }

    /// How this engine's KV blocks are laid out when they move; None if they cannot.
    pub fn block_layout(&self) -> Option<runtime::kv::BlockLayout> {
        self.executor.block_layout()
    }

    pub fn model_fingerprint(&self) -> u64 {
        self.executor.model_fingerprint()
    }

    /// The executor's KV pool, when engines of this process can copy blocks into it directly.
    pub fn device_pool(&self) -> Option<Arc<dyn crate::executor::DevicePool>> {
        self.executor.device_pool()
    }

    /// Hold the cached leading blocks of `hashes` and allocate blank ones for the rest, for KV
    /// that another worker will send. None when the pool cannot spare them.
    pub fn reserve(&mut self, hashes: &[u64]) -> Option<Reservation> {
        let cached = self.pool.acquire_prefix(hashes);
        match self.pool.allocate(hashes.len() - cached.len()) {
            Ok(fresh) => {
                self.collect_offload();
                Some(Reservation { cached, fresh })
            }
            Err(_) => {
                self.pool.release(&cached);
                None
            }
        }
    }

    /// Write one block's K and V, received from another worker, into a reserved block.
    pub fn import_block(&mut self, block: crate::pool::BlockId, data: &[u8]) -> Result<(), ExecutorError> {
        self.executor.import_block(block, data)
    }

    /// Copy blocks out, one after another, into `out`.
    pub fn export_blocks(&self, blocks: &[crate::pool::BlockId], out: &mut [u8]) -> Result<(), ExecutorError> {
        let n = self.block_layout().map_or(0, |l| l.block_bytes());
        if n == 0 || out.len() != n * blocks.len() {
            return Err(ExecutorError::Blocks(format!("{} bytes for {} blocks", out.len(), blocks.len())));
        }
        for (b, chunk) in blocks.iter().zip(out.chunks_exact_mut(n)) {
            self.executor.export_block(*b, chunk)?;
        }
        Ok(())
    }

    /// The reserved blocks are filled: register the fresh ones under the rest of `hashes` (the
    /// prompt's, from the start) and let go of all of them. They are now in the prefix cache, so
    /// the request that follows finds them.
    pub fn commit(&mut self, r: Reservation, hashes: &[u64]) {
        let start = r.cached.len();
        for (i, &b) in r.fresh.iter().enumerate() {
            let k = start + i;
            let parent = k.checked_sub(1).map(|p| hashes[p]);
            self.pool.register(b, parent, hashes[k]);
        }
        self.collect_offload();
        self.pool.release(&[r.cached, r.fresh].concat());
    }

    /// Give a reservation back unused.
    pub fn abort(&mut self, r: Reservation) {
        self.pool.release(&[r.cached, r.fresh].concat());
    }

    /// Compute the KV of `tokens` (whole blocks) for another worker. The blocks from `skip` on
    /// are reported by `take_prefilled` as they complete.
    pub fn submit_prefill(&mut self, id: RequestId, tokens: Vec<u32>, skip: usize) -> Result<(), RequestError> {
        if self.block_layout().is_none() {
            return Err(RequestError::NoExport);
        }
        if tokens.is_empty() || !tokens.len().is_multiple_of(self.limits.block_size) {
            return Err(RequestError::NotWholeBlocks { block_size: self.limits.block_size });
        }
        let req = GenerateRequest { id, tag: None, trace: None, prompt_tokens: tokens, sampling: Default::default() };
        Self::check(&self.limits, &req)?;
        self.check_vocab(&req.prompt_tokens)?;
        let mut seq = Sequence::new(req);
        seq.prefill = Some(PrefillState { skip, reported: 0 });
        self.waiting.push_back(seq);
        Ok(())
    }

    /// Prefill blocks completed since the last call. Each chunk's blocks stay referenced until
    /// `release_prefilled`, so they can be exported first.
    pub fn take_prefilled(&mut self) -> Vec<Prefilled> {
        std::mem::take(&mut self.prefilled)
    }

    pub fn release_prefilled(&mut self, p: &Prefilled) {
        self.pool.release(&p.blocks);
    }

    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// Why a request can never run here, if it cannot.
    pub fn check(limits: &EngineLimits, req: &GenerateRequest) -> Result<(), RequestError> {
        let prompt = req.prompt_tokens.len();
        if prompt == 0 {
            return Err(RequestError::EmptyPrompt);
        }
        if prompt >= limits.context_length as usize {
            return Err(RequestError::TooLong { prompt, context: limits.context_length });
        }
        let longest = (prompt + req.sampling.max_tokens.max(1) as usize).min(limits.context_length as usize);
        let blocks = longest.div_ceil(limits.block_size);
        if blocks > limits.kv_blocks {
            return Err(RequestError::PoolTooSmall { tokens: longest, blocks, pool: limits.kv_blocks });
        }
        Ok(())
    }

    /// Queue a request. Returns an immediate failure event when it can never run.
    pub fn submit(&mut self, req: GenerateRequest) -> Option<StreamEvent> {
        let matcher = req.sampling.constraint.as_ref().map(|c| self.grammars.matcher(c));
        self.submit_compiled(req, matcher)
    }

    /// The compiler of this engine's constraints, for compiling them off the engine's thread.
    pub fn grammars(&self) -> Arc<crate::constraint::Grammars> {
        self.grammars.clone()
    }

    /// `submit`, with the request's constraint already compiled (None: it has none).
    pub fn submit_compiled(
        &mut self,
        req: GenerateRequest,
        matcher: Option<Result<crate::constraint::Matcher, crate::constraint::ConstraintError>>,
    ) -> Option<StreamEvent> {
        if let Err(reason) = Self::check(&self.limits, &req).and_then(|()| self.check_vocab(&req.prompt_tokens)) {
            return Some(StreamEvent::Failed(WorkerFailure::Invalid(reason.to_string())));
        }
        let matcher = match matcher {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => return Some(StreamEvent::Failed(WorkerFailure::Invalid(format!("constraint: {e}")))),
            None => None,
        };
        let mut seq = Sequence::new(req);
        seq.matcher = matcher;
        let reusable = self.hasher.reusable_hashes(&seq.tokens);
        seq.ready = seq.score.is_none() && !reusable.is_empty() && self.pool.cached_prefix(&reusable) == reusable.len();
        self.waiting.push_back(seq);
        None
    }

    /// Every token id must be in the model's vocabulary.
    fn check_vocab(&self, tokens: &[u32]) -> Result<(), RequestError> {
        let vocab = self.executor.info().vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&id) => Err(RequestError::OutsideVocabulary { id, vocab }),
            None => Ok(()),
        }
    }

    /// Drop a request wherever it is and free its blocks. Returns whether it was known.
    pub fn cancel(&mut self, id: &RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| &s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| &s.id == id) {
            let seq = self.running.remove(i);
            self.pool.release(&seq.blocks);
            return true;
        }
        false
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats { pool: self.pool.stats(), ..self.stats }
    }

    /// KV events of the pool since the last call.
    pub fn take_kv_events(&mut self) -> Vec<KvEventRecord> {
        self.pool.take_events()
    }

    /// Every block the pool holds, as of its latest event.
    pub fn kv_dump(&self) -> runtime::kv::KvDump {
        self.pool.dump()
    }

    /// Draw the next token of every planned sequence that samples from a plain row of logits
    /// (not a prefill, not a scored prompt), by plan position. Each draw touches only its own
    /// sequence (sampler, matcher), so a batch's draws run over the executor's host threads: on a
    /// CPU worker they would otherwise run one after another while its compute threads wait.
    fn draw_batch(&mut self, plan: &[Planned], outputs: &[Option<StepOutput>]) -> Vec<Option<Drawn>> {
        struct Draw<'a> {
            at: usize,
            seq: &'a mut Sequence,
            logits: &'a [f32],
            drawn: Option<Drawn>,
        }
        let mut position = vec![usize::MAX; self.running.len()];
        for (k, p) in plan.iter().enumerate() {
            position[p.index] = k;
        }
        let mut draws: Vec<Draw<'_>> = self
            .running
            .iter_mut()
            .zip(position)
            .filter_map(|(seq, k)| {
                let p = plan.get(k)?;
                let plain = seq.prefill.is_none() && seq.score.is_none() && p.end == seq.tokens.len();
                match &outputs[k] {
                    Some(StepOutput::Logits(logits)) if plain && !seq.wants_no_tokens() => {
                        Some(Draw { at: k, seq, logits, drawn: None })
                    }
                    _ => None,
                }
            })
            .collect();
        let parallel = draws.len() > 1;
        let mut draw_all = || {
            crate::cpu::threads::for_each_chunk_mut(&mut draws, 1, |_, chunk| {
                for d in chunk {
                    d.drawn = Some(d.seq.draw(d.logits));
                }
            })
        };
        if parallel {
            self.executor.with_host_threads(&mut draw_all);
        } else {
            draw_all();
        }
        let mut drawn = vec![None; plan.len()];
        for d in draws {
            drawn[d.at] = d.drawn;
        }
        drawn
    }

    /// One engine iteration: plan, forward the batch, register blocks, sample.
    pub fn step(&mut self) -> Result<Vec<(RequestId, StreamEvent)>, ExecutorError> {
        let plan = self.plan();
        // Evicted blocks still hold their KV until this step's forward pass overwrites them.
        self.collect_offload();
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let picks = self.picks(&plan);
        // Constrained sequences' masks are computed on another thread while the forward pass
        // runs (their matchers taken out meanwhile, and put back before sampling).
        let mut matchers: Vec<(usize, crate::constraint::Matcher)> = Vec::new();
        for p in &plan {
            let s = &mut self.running[p.index];
            if p.end == s.tokens.len()
                && let Some(m) = s.matcher.take()
            {
                matchers.push((p.index, m));
            }
        }
        let views: Vec<SequenceView<'_>> = plan
            .iter()
            .map(|p| {
                let s = &self.running[p.index];
                SequenceView {
                    tokens: &s.tokens[..p.end],
                    start: s.computed,
                    prompt_len: s.prompt_len,
                    blocks: &s.blocks,
                    wants_logits: p.end == s.tokens.len() && s.prefill.is_none(),
                    all_logits: s.score.is_some(),
                }
            })
            .collect();
        let executor = &mut *self.executor;
        let (outputs, matchers, mask_time) = std::thread::scope(|scope| {
            let masks = (!matchers.is_empty()).then(|| {
                scope.spawn(move || {
                    let start = std::time::Instant::now();
                    for (_, m) in &mut matchers {
                        // An error is met again, and handled, when the mask is applied.
                        let _ = m.compute_mask();
                    }
                    (matchers, start.elapsed())
                })
            });
            let outputs = run_batch(executor, &views, picks);
            let (matchers, took) = match masks {
                Some(h) => h.join().expect("the mask thread does not panic"),
                None => (Vec::new(), std::time::Duration::ZERO),
            };
            (outputs, matchers, took)
        });
        drop(views);
        self.stats.masks += matchers.len() as u64;
        self.stats.mask_micros += mask_time.as_micros() as u64;
        for (i, m) in matchers {
            self.running[i].matcher = Some(m);
        }
        let outputs = outputs?;
        if outputs.len() != plan.len() {
            return Err(ExecutorError::Forward(format!("{} results for a batch of {}", outputs.len(), plan.len())));
        }
        let mut drawn = self.draw_batch(&plan, &outputs);
        let mut events = Vec::new();
        let mut finished = Vec::new();
        for (k, (p, row)) in plan.iter().zip(outputs).enumerate() {
            let seq = &mut self.running[p.index];
            let start = seq.computed;
            self.stats.computed_tokens += (p.end - seq.computed) as u64;
            seq.computed = p.end;
            seq.register_full_blocks(&mut self.pool, &self.hasher);
            if let Some(pf) = seq.prefill {
                let done = p.end == seq.tokens.len();
                let registered = seq.hashes().len();
                let from = pf.reported.max(pf.skip).min(registered);
                if registered > from || done {
                    let blocks = seq.blocks[from..registered].to_vec();
                    for &b in &blocks {
                        self.pool.retain(b);
                    }
                    let hashes = seq.hashes()[from..registered].to_vec();
                    self.prefilled.push(Prefilled { id: seq.id.clone(), first: from, blocks, hashes, done });
                    seq.prefill = Some(PrefillState { reported: registered.max(pf.reported), ..pf });
                }
                if done {
                    finished.push(p.index);
                }
                continue;
            }
            let row = match row {
                Some(StepOutput::Logits(mut rows)) if seq.score.is_some() => {
                    let vocab = self.executor.info().vocab_size;
                    seq.score_rows(start, &rows, vocab, &mut events);
                    // The last row is the next token's, when the chunk ends the sequence.
                    (p.end == seq.tokens.len() && rows.len() >= vocab).then(|| {
                        rows.drain(..rows.len() - vocab);
                        StepOutput::Logits(rows)
                    })
                }
                row => row,
            };
            if p.end < seq.tokens.len() {
                continue; // a prefill chunk: no token yet
            }
            if seq.wants_no_tokens() {
                // Only the prompt was wanted (scored): done without a token.
                events
                    .push((seq.id.clone(), StreamEvent::Finished { reason: FinishReason::Length, usage: seq.usage() }));
                finished.push(p.index);
                continue;
            }
            let context = self.limits.context_length as usize;
            let finish = match (drawn[k].take(), row) {
                (Some(Drawn::Token(token)), _) | (None, Some(StepOutput::Token(token))) => {
                    seq.push_token(&*self.tokenizer, token, context, &mut events)
                }
                (Some(Drawn::Stopped), _) => Some(FinishReason::Stop),
                (None, Some(StepOutput::Logits(logits))) => {
                    seq.advance(&*self.tokenizer, &logits, context, &mut events)
                }
                (None, None) => return Err(ExecutorError::Forward("no logits for a sequence that needed them".into())),
            };
            if let Some(reason) = finish {
                events.push((seq.id.clone(), StreamEvent::Finished { reason, usage: seq.usage() }));
                finished.push(p.index);
            }
        }
        // Blocks registered this step (write-through).
        self.collect_offload();
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            let seq = self.running.remove(i);
            self.pool.release(&seq.blocks);
        }
        Ok(events)
    }

    /// Each planned sequence's `Pick` when the executor picks tokens itself and every sequence
    /// that wants a token has a sampling it can describe (None otherwise: logits, sampled here).
    fn picks(&mut self, plan: &[Planned]) -> Option<Vec<Option<Pick>>> {
        if !self.executor.picks_tokens() {
            return None;
        }
        let wants = |s: &Sequence, p: &Planned| p.end == s.tokens.len() && s.prefill.is_none();
        // A prompt being scored needs every row's logits on the host.
        if plan.iter().any(|p| {
            let s = &self.running[p.index];
            s.score.is_some() || (wants(s, p) && !s.can_pick())
        }) {
            return None;
        }
        Some(
            plan.iter()
                .map(|p| {
                    let s = &mut self.running[p.index];
                    if wants(s, p) { s.pick() } else { None }
                })
                .collect(),
        )
    }

    /// Choose this step's work and make sure every chosen sequence has the blocks it needs.
    fn plan(&mut self) -> Vec<Planned> {
        let bs = self.limits.block_size;
        let mut budget = self.limits.max_batch_tokens.max(1);
        let mut plan = Vec::new();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let end = seq.computed + (seq.tokens.len() - seq.computed).min(budget);
            let needed = end.div_ceil(bs).saturating_sub(seq.blocks.len());
            if needed > self.pool.available() {
                // Make room by recomputing the youngest running sequence later (maybe this one).
                let victim = self.running.len() - 1;
                self.preempt(victim);
                preempted = true;
                continue;
            }
            let fresh = self.pool.allocate(needed).expect("checked available");
            let seq = &mut self.running[i];
            seq.blocks.extend(fresh);
            budget -= end - seq.computed;
            plan.push(Planned { index: i, end });
            i += 1;
        }
        // Admit waiting sequences: of higher priority first, then those whose prompt is in the
        // pool, then in arrival order; unless this step already had to make room.
        while !preempted && budget > 0 && self.running.len() < self.limits.max_batch {
            let next = self
                .waiting
                .iter()
                .enumerate()
                .max_by_key(|(i, s)| (s.priority, s.ready, std::cmp::Reverse(*i)))
                .map_or(0, |(i, _)| i);
            let Some(seq) = self.waiting.get(next) else { break };
            let hashes = self.hasher.sequence_hashes(&seq.tokens);
            // Leave at least one token to compute: its logits are the next token's. A prompt
            // being scored is computed whole: a cached block says nothing of its logits.
            let reusable = if seq.score.is_some() { 0 } else { self.hasher.reusable_blocks(seq.tokens.len()) };
            let cached = self.pool.acquire_prefix(&hashes[..reusable.min(hashes.len())]);
            let computed = cached.len() * bs;
            let end = computed + (seq.tokens.len() - computed).min(budget);
            let needed = end.div_ceil(bs) - cached.len();
            if needed > self.pool.available() {
                self.pool.release(&cached);
                break;
            }
            let fresh = self.pool.allocate(needed).expect("checked available");
            let mut seq = self.waiting.remove(next).expect("checked above");
            seq.admit(cached, fresh, &hashes, bs);
            self.stats.cached_tokens += computed as u64;
            budget -= end - seq.computed;
            self.running.push(seq);
            plan.push(Planned { index: self.running.len() - 1, end });
        }
        plan
    }

    /// Release a running sequence's blocks and queue it first for recomputation.
    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.pool.release(&seq.blocks);
        seq.reset_kv();
        self.stats.preemptions += 1;
        self.waiting.push_front(seq);
    }
}

/// Why a sequence stops after its newest token, if it does.
fn finish_reason(
    is_eos: bool,
    stopped: bool,
    generated: u32,
    max_tokens: u32,
    len: usize,
    context: usize,
) -> Option<FinishReason> {
    if is_eos || stopped {
        Some(FinishReason::Stop)
    } else if generated >= max_tokens || len >= context {
        Some(FinishReason::Length)
    } else {
        None
    }
}

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod tests;
