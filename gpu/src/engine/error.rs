//! Why the engine refused a request, and why a command to its thread failed. The worker turns
//! them into the wire's `WorkerFailure` text only at the boundary.

use crate::executor::ExecutorError;

/// A request (or a prefill for another worker) that can never run on this engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens; this model's context length is {context}")]
    TooLong { prompt: usize, context: u32 },
    #[error(
        "the request needs up to {tokens} tokens of KV cache ({blocks} blocks); this worker's pool has {pool} blocks"
    )]
    PoolTooSmall { tokens: usize, blocks: usize, pool: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    OutsideVocabulary { id: u32, vocab: usize },
    #[error("this worker's executor cannot export KV blocks")]
    NoExport,
    #[error("a prefill takes whole blocks of {block_size} tokens")]
    NotWholeBlocks { block_size: usize },
}

/// A command to the engine thread that failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The thread ended (its reason is in the failed requests' events).
    #[error("the engine thread is gone")]
    Gone,
    /// It ended with this reason before the command.
    #[error("the engine stopped: {0}")]
    Stopped(String),
    #[error("{bytes} bytes for {blocks} blocks")]
    ImportSize { bytes: usize, blocks: usize },
    #[error("importing KV blocks failed")]
    Import(#[source] ExecutorError),
}
