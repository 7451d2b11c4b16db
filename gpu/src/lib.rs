//! One device's work: tokenizer and chat template, the `Executor` seam (the model's forward pass, or
//! the deterministic test executor), sampling, stop strings, and the continuous-batching engine
//! that runs on its own OS thread.

pub mod bench;
pub mod chat;
pub mod constraint;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod executor;
pub mod model;
pub mod pool;
pub mod sampling;
pub mod stop;
pub mod tokenizer;

pub use engine::{Engine, EngineHandle, EngineLimits, Outputs, Taken};
pub use executor::{Executor, ExecutorError, ModelInfo, SequenceView};
pub use model::{LoadedModel, ModelError};
pub use tokenizer::{IncrementalDecoder, Tokenizer};
