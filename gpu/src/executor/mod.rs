//! The `Executor` seam: one forward step over a batch of sequences, giving next-token logits.
//! A real model backend and the deterministic test executor sit behind it.

mod simulated;
mod test_model;

pub use simulated::{SimulatedExecutor, StepClock, TimingModel};

pub use test_model::{TEST_PANIC_MARKER, TestExecutor, TestTokenizer};

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
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("forward pass failed: {0}")]
    Forward(String),
}

pub trait Executor: Send {
    fn info(&self) -> ModelInfo;
    /// Compute each sequence's chunk. For each, in batch order: the next-token logits (length
    /// `vocab_size`) after its last token when `wants_logits`, else None (a prefill chunk).
    fn forward(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<Option<Vec<f32>>>, ExecutorError>;
}
