//! One sequence in the engine: its tokens, its KV blocks, and its sampling and output state.

use runtime::blocks::BlockHasher;
use runtime::ids::RequestId;
use runtime::request::{FinishReason, GenerateRequest, StreamEvent, Usage};

use super::finish_reason;
use crate::pool::{BlockId, BlockPool};
use crate::sampling::Sampler;
use crate::stop::StopMatcher;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// What `Sequence::draw` chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Drawn {
    Token(u32),
    /// The constraint could not mask the logits: the sequence stops.
    Stopped,
}

pub(super) struct Sequence {
    pub id: RequestId,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    max_tokens: u32,
    ignore_eos: bool,
    /// The caller's priority: higher is admitted first.
    pub priority: i32,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    /// Tokens generated since the last text was emitted.
    unreported: u32,
    /// Their log probabilities, when the request asked for them.
    unreported_logprobs: Vec<runtime::request::TokenLogprob>,
    /// KV blocks, in token order.
    pub blocks: Vec<BlockId>,
    /// Tokens whose KV is in `blocks`.
    pub computed: usize,
    /// Prompt tokens whose KV was in the pool when it was first admitted.
    cached: Option<usize>,
    /// Sequence hashes of the leading blocks that are registered in the pool.
    hashes: Vec<u64>,
    /// Set for a prefill computed for another worker: no sampling, blocks reported instead.
    pub prefill: Option<PrefillState>,
    /// The constraint's matcher, when the output must match one: it masks each token.
    pub matcher: Option<crate::constraint::Matcher>,
    /// Prompt scoring, while the prompt's log probabilities are still to be sent.
    pub score: Option<PromptScore>,
    /// Its prompt's KV, all but the last token, was in the pool when it was submitted (blocks
    /// that landed from a prefill worker, or a cached prefix): admitting it costs one token, so
    /// it goes before prompts still waiting to be computed.
    pub ready: bool,
}

/// A prompt being scored: how many alternatives each token reports, and the entries of the
/// prompt's tokens from the second on, as far as computed.
#[derive(Debug)]
pub struct PromptScore {
    top: u32,
    entries: Vec<runtime::request::TokenLogprob>,
}

/// A prefill for another worker: which blocks it wants, and how far they have been reported.
#[derive(Clone, Copy, Debug)]
pub struct PrefillState {
    /// Blocks the other worker already has (not reported).
    pub skip: usize,
    /// Blocks reported so far.
    pub reported: usize,
}

impl Sequence {
    pub fn new(req: GenerateRequest) -> Self {
        Self {
            id: req.id,
            prompt_len: req.prompt_tokens.len(),
            max_tokens: req.sampling.max_tokens,
            ignore_eos: req.sampling.ignore_eos,
            priority: req.sampling.priority,
            sampler: Sampler::new(&req.sampling, &req.prompt_tokens),
            stop: StopMatcher::new(&req.sampling.stop),
            tokens: req.prompt_tokens,
            decoder: IncrementalDecoder::default(),
            unreported: 0,
            unreported_logprobs: Vec::new(),
            blocks: Vec::new(),
            computed: 0,
            cached: None,
            hashes: Vec::new(),
            prefill: None,
            matcher: None,
            score: req.sampling.prompt_logprobs.map(|top| PromptScore { top, entries: Vec::new() }),
            ready: false,
        }
    }

    /// Whether it asked for no tokens at all (it only scores its prompt).
    pub fn wants_no_tokens(&self) -> bool {
        self.max_tokens == 0
    }

    /// Take the logits `rows` after each token of `tokens[start..start + rows.len() / vocab]`:
    /// each gives the next prompt token's entry, until the prompt's last. Once the whole prompt
    /// is scored, its `Scored` event goes out and scoring stops.
    pub fn score_rows(&mut self, start: usize, rows: &[f32], vocab: usize, events: &mut Vec<(RequestId, StreamEvent)>) {
        let Some(score) = &mut self.score else { return };
        for (i, row) in rows.chunks_exact(vocab).enumerate() {
            let next = start + i + 1;
            // Rows already scored before a preemption are computed again, and skipped.
            if next < self.prompt_len && next == score.entries.len() + 1 {
                score.entries.push(crate::sampling::logprobs(row, self.tokens[next], score.top as usize));
            }
        }
        if score.entries.len() + 1 >= self.prompt_len {
            let logprobs = std::mem::take(&mut score.entries);
            self.score = None;
            events.push((self.id.clone(), StreamEvent::Scored { first: self.tokens[0], logprobs }));
        }
    }

    /// Sequence hashes of the registered leading blocks.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    pub fn generated(&self) -> u32 {
        (self.tokens.len() - self.prompt_len) as u32
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len as u32,
            completion_tokens: self.generated(),
            cached_tokens: self.cached.unwrap_or(0).min(self.prompt_len) as u32,
        }
    }

    /// Start running with `cached` prefix blocks (already registered, under `hashes`) and `fresh`
    /// blank ones.
    pub fn admit(&mut self, cached: Vec<BlockId>, fresh: Vec<BlockId>, hashes: &[u64], block_size: usize) {
        self.hashes = hashes[..cached.len()].to_vec();
        self.computed = cached.len() * block_size;
        // A preempted sequence admitted again finds its own blocks: not the cache's work.
        self.cached.get_or_insert(self.computed);
        self.blocks = cached;
        self.blocks.extend(fresh);
    }

    /// Forget all KV state (after preemption); generated tokens are kept and recomputed.
    pub fn reset_kv(&mut self) {
        self.blocks.clear();
        self.hashes.clear();
        self.computed = 0;
    }

    /// Register every block that became full.
    pub fn register_full_blocks(&mut self, pool: &mut BlockPool, hasher: &BlockHasher) {
        let bs = hasher.block_size();
        let full = self.computed / bs;
        while self.hashes.len() < full {
            let b = self.hashes.len();
            let parent = self.hashes.last().copied();
            let hash = hasher.chain(parent, hasher.local_hash(&self.tokens[b * bs..(b + 1) * bs]));
            pool.register(self.blocks[b], parent, hash);
            self.hashes.push(hash);
        }
    }

    /// Whether `pick` describes this sequence's sampling (a constrained one is masked and
    /// sampled on the host).
    pub fn can_pick(&self) -> bool {
        self.matcher.is_none() && self.sampler.can_pick()
    }

    /// How the executor may pick this sequence's next token itself (see `Sampler::pick`).
    pub fn pick(&mut self) -> Option<crate::executor::Pick> {
        self.sampler.pick()
    }

    /// Sample the next token from `logits`, emit its text, and say whether the sequence is done.
    pub fn advance(
        &mut self,
        tokenizer: &dyn Tokenizer,
        logits: &[f32],
        context: usize,
        events: &mut Vec<(RequestId, StreamEvent)>,
    ) -> Option<FinishReason> {
        match self.draw(logits) {
            Drawn::Token(token) => self.push_token(tokenizer, token, context, events),
            Drawn::Stopped => Some(FinishReason::Stop),
        }
    }

    /// Choose the next token from `logits` (masked by the constraint, with its log probability
    /// kept when asked for), touching nothing but this sequence's sampling state: the engine
    /// draws a batch's sequences in parallel, then pushes their tokens in order.
    pub fn draw(&mut self, logits: &[f32]) -> Drawn {
        let token = match &mut self.matcher {
            Some(m) => {
                let mut masked = logits.to_vec();
                if let Err(e) = m.apply(&mut masked, !self.ignore_eos) {
                    tracing::warn!(request = %self.id, "constrained decoding stopped: {e}");
                    return Drawn::Stopped;
                }
                self.sampler.sample(&masked)
            }
            None => self.sampler.sample(logits),
        };
        // Of the model's distribution: before the constraint's mask, as before the penalties.
        if let Some(top) = self.sampler.wants_logprobs() {
            self.unreported_logprobs.push(crate::sampling::logprobs(logits, token, top));
        }
        Drawn::Token(token)
    }

    /// Append `token` (sampled here or picked by the executor), emit its text, and say whether
    /// the sequence is done.
    pub fn push_token(
        &mut self,
        tokenizer: &dyn Tokenizer,
        token: u32,
        context: usize,
        events: &mut Vec<(RequestId, StreamEvent)>,
    ) -> Option<FinishReason> {
        self.tokens.push(token);
        self.sampler.observe(token);
        self.unreported += 1;
        let is_eos = !self.ignore_eos && tokenizer.eos_tokens().contains(&token);
        // A constrained output ends where its grammar does.
        let mut complete = false;
        if let (Some(m), false) = (&mut self.matcher, is_eos) {
            match m.consume(token) {
                Ok(()) => complete = m.is_complete(),
                Err(e) => {
                    tracing::warn!(request = %self.id, "constrained decoding stopped: {e}");
                    complete = true;
                }
            }
        }
        let mut stopped = false;
        let mut matched = None;
        if !is_eos {
            let text = self.decoder.push(tokenizer, token);
            let out = self.stop.push(&text);
            (stopped, matched) = (out.stopped, out.matched);
            self.emit(events, out.emit);
        }
        let ended = is_eos || complete;
        let reason = finish_reason(ended, stopped, self.generated(), self.max_tokens, self.tokens.len(), context)?;
        let reason = match matched {
            Some(i) => FinishReason::StopSequence(i as u32),
            None => reason,
        };
        if !stopped {
            // Release text held back for a UTF-8 or stop-string edge.
            let tail = self.decoder.finish();
            let mut rest = self.stop.push(&tail).emit;
            rest.push_str(&self.stop.finish());
            self.emit(events, rest);
        }
        Some(reason)
    }

    fn emit(&mut self, events: &mut Vec<(RequestId, StreamEvent)>, text: String) {
        if !text.is_empty() {
            let ids = self.tokens[self.tokens.len() - self.unreported as usize..].to_vec();
            let logprobs = std::mem::take(&mut self.unreported_logprobs);
            events.push((self.id.clone(), StreamEvent::Delta { text, tokens: self.unreported, ids, logprobs }));
            self.unreported = 0;
        }
    }
}
