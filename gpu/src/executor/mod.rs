//! The `Executor` seam: one forward step over a batch of sequences, giving next-token logits.
//! A real model backend and the deterministic test executor sit behind it.

mod test_model;

pub use test_model::{TEST_PANIC_MARKER, TestExecutor, TestTokenizer};

/// What the scheduler needs to know about the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub vocab_size: usize,
    pub context_length: u32,
}

/// One sequence of a batch: all its tokens so far (prompt then generated).
#[derive(Clone, Copy, Debug)]
pub struct SequenceView<'a> {
    pub tokens: &'a [u32],
    pub prompt_len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("forward pass failed: {0}")]
    Forward(String),
}

pub trait Executor: Send {
    fn info(&self) -> ModelInfo;
    /// Next-token logits (length `vocab_size`) for each sequence, in batch order.
    fn forward(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<Vec<f32>>, ExecutorError>;
}
