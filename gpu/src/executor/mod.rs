//! The `Executor` seam: one forward step over a batch of sequences, giving next-token logits.
//! A real model backend and the deterministic test executor sit behind it.

mod device_pool;
mod simulated;
mod test_model;

pub use device_pool::{DevicePool, DeviceSink, SinkError};
pub use simulated::{SimulatedExecutor, StepClock, TimingModel};

pub use test_model::{TEST_PANIC_MARKER, TestExecutor, TestPool, TestTokenizer};

/// What the scheduler needs to know about the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub vocab_size: usize,
    pub context_length: u32,
}

/// One sequence's share of a step: compute the KV of `tokens[start..]` (the KV of
/// `tokens[..start]` is already in `blocks`), writing it into `blocks`.
#[derive(Clone, Copy, Debug)]
pub struct SequenceView<'a> {
    /// The sequence up to the end of this step's chunk (prompt, then generated tokens).
    pub tokens: &'a [u32],
    /// Tokens whose KV is already computed.
    pub start: usize,
    pub prompt_len: usize,
    /// KV blocks covering at least `tokens.len()` tokens, in order.
    pub blocks: &'a [crate::pool::BlockId],
    /// The chunk reaches the end of the sequence: return the next-token logits.
    pub wants_logits: bool,
    /// Prompt scoring: return the logits after every token of the chunk, not only the last (rows
    /// in token order, `tokens.len() - start` of them, each `vocab_size` long, concatenated),
    /// whether or not `wants_logits`.
    pub all_logits: bool,
}

impl<'a> SequenceView<'a> {
    /// A whole prompt computed from scratch into `blocks`, wanting the next token's logits.
    pub fn whole_prompt(tokens: &'a [u32], blocks: &'a [crate::pool::BlockId]) -> Self {
        Self { tokens, start: 0, prompt_len: tokens.len(), blocks, wants_logits: true, all_logits: false }
    }

    /// How many logit rows `forward` returns for this sequence.
    pub fn logit_rows(&self) -> usize {
        if self.all_logits { self.tokens.len() - self.start } else { usize::from(self.wants_logits) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("forward pass failed: {0}")]
    Forward(String),
    #[error("KV blocks: {0}")]
    Blocks(String),
}

/// How an executor that picks tokens itself (on its device) picks a sequence's next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pick {
    /// The largest logit.
    Greedy,
    /// From softmax(logits / temperature) restricted to the top-p nucleus, with this uniform
    /// draw in [0, 1) (taken from the sequence's seeded generator).
    Nucleus { temperature: f32, top_p: f32, uniform: f32 },
}

pub trait Executor: Send {
    fn info(&self) -> ModelInfo;
    /// Compute each sequence's chunk. For each, in batch order: the next-token logits (length
    /// `vocab_size`) after its last token when `wants_logits`; every row of the chunk with
    /// `all_logits` (see `SequenceView::logit_rows`); else None (a prefill chunk).
    fn forward(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<Option<Vec<f32>>>, ExecutorError>;

    /// Whether `forward_picked` picks tokens on the executor's device (then the engine does not
    /// download logits for sequences whose sampling a `Pick` describes).
    fn picks_tokens(&self) -> bool {
        false
    }

    /// As `forward`, but each sequence that wants logits gets its next token, picked as
    /// `picks[i]` says (`None`: greedy). None when this executor does not pick tokens. The engine
    /// never asks for picks in a batch with an `all_logits` sequence.
    fn forward_picked(
        &mut self,
        batch: &[SequenceView<'_>],
        picks: &[Option<Pick>],
    ) -> Option<Result<Vec<Option<u32>>, ExecutorError>> {
        let _ = (batch, picks);
        None
    }

    /// Run `work` with this executor's host threads at hand: the parallel loops of
    /// `crate::cpu::threads` inside it spread over them (the CPU backend's compute pool). The
    /// engine draws a batch's tokens this way. By default `work` runs alone on the calling thread.
    fn with_host_threads(&mut self, work: &mut dyn FnMut()) {
        work();
    }

    /// How one KV block is laid out when exported; None when this executor's blocks cannot
    /// move (then prefill is never disaggregated to or from it).
    fn block_layout(&self) -> Option<runtime::kv::BlockLayout> {
        None
    }

    /// Identifies the model whose KV the blocks hold: blocks move only between equal
    /// fingerprints (and layouts).
    fn model_fingerprint(&self) -> u64 {
        0
    }

    /// This executor's KV pool, for engines of the same process to copy blocks into device to
    /// device (`DevicePool`); None when its blocks move only as bytes.
    fn device_pool(&self) -> Option<std::sync::Arc<dyn DevicePool>> {
        None
    }

    /// Copy `block`'s K and V into `out` (`block_layout().block_bytes()` bytes).
    fn export_block(&self, block: crate::pool::BlockId, out: &mut [u8]) -> Result<(), ExecutorError> {
        let _ = (block, out);
        Err(ExecutorError::Blocks("this executor cannot export KV blocks".into()))
    }

    /// Overwrite `block`'s K and V with `data`, as `export_block` wrote it on another worker.
    fn import_block(&mut self, block: crate::pool::BlockId, data: &[u8]) -> Result<(), ExecutorError> {
        let _ = (block, data);
        Err(ExecutorError::Blocks("this executor cannot import KV blocks".into()))
    }
}

/// Check the length of a block's bytes against a layout.
pub fn check_block_len(layout: &runtime::kv::BlockLayout, len: usize) -> Result<(), ExecutorError> {
    if len != layout.block_bytes() {
        return Err(ExecutorError::Blocks(format!("{len} bytes for a block of {} bytes", layout.block_bytes())));
    }
    Ok(())
}
