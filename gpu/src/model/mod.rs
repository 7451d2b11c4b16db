//! Loading what `[model]` names: the executor a worker runs and the tokenizer a gateway uses.

pub mod fetch;
pub mod gguf;
pub mod quant;

use std::sync::Arc;

use runtime::config::ModelSection;

use crate::chat::{ChatMessage, render_chatml};
use crate::executor::{Executor, TestExecutor, TestTokenizer};
use crate::tokenizer::Tokenizer;

const TEST_CONTEXT_LENGTH: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model.source = \"{0}\" is not supported by this build (only \"test\")")]
    UnsupportedSource(String),
}

/// What a gateway needs of a model: its id, tokenizer, chat format and context length.
#[derive(Clone)]
pub struct ModelFrontend {
    pub name: String,
    pub tokenizer: Arc<dyn Tokenizer>,
    pub context_length: u32,
    pub default_max_tokens: u32,
}

impl ModelFrontend {
    pub fn load(section: &ModelSection, name: String) -> Result<Self, ModelError> {
        match section.source.as_str() {
            "test" => Ok(Self {
                name,
                tokenizer: Arc::new(TestTokenizer::default()),
                context_length: section.context_length.unwrap_or(TEST_CONTEXT_LENGTH),
                default_max_tokens: section.default_max_tokens,
            }),
            other => Err(ModelError::UnsupportedSource(other.to_string())),
        }
    }

    /// The prompt text for a chat.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> String {
        render_chatml(messages, true)
    }
}

/// What a worker runs.
pub struct LoadedModel {
    pub executor: Box<dyn Executor>,
    pub tokenizer: Arc<dyn Tokenizer>,
}

impl LoadedModel {
    pub fn load(section: &ModelSection) -> Result<Self, ModelError> {
        match section.source.as_str() {
            "test" => Ok(Self {
                executor: Box::new(TestExecutor::new(
                    section.test.step_delay.get(),
                    section.context_length.unwrap_or(TEST_CONTEXT_LENGTH),
                )),
                tokenizer: Arc::new(TestTokenizer::default()),
            }),
            other => Err(ModelError::UnsupportedSource(other.to_string())),
        }
    }
}
