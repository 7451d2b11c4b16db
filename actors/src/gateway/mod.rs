//! The gateway role: the OpenAI-compatible HTTP API (chat and text completions, models, SSE),
//! the Responses API, Anthropic's Messages API, tokenizing, health and metrics, and the access log
//! (`access`: one line per finished request), and the live dashboard (`dashboard`).

mod access;
mod actor;
mod anthropic;
mod auth;
mod choices;
mod dashboard;
mod driver;
mod error;
mod http;
mod openai;
mod reasoning;
mod responses;
mod serve;
mod tokenize;
mod tools;

use std::sync::Arc;

use gpu::model::ModelFrontend;
use runtime::blocks::BlockHasher;
use runtime::config::GatewaySection;

pub use actor::{GatewayActor, GatewayArgs, GatewayMsg};
pub use auth::{Auth, Caller};
pub use error::ApiError;
pub use http::router as http_router;

use crate::protocol::NodeState;

/// What every HTTP handler shares.
pub struct Gateway {
    pub model: ModelFrontend,
    pub node: Arc<NodeState>,
    pub config: GatewaySection,
    /// The workers' block-hash scheme, so the router can match prompts against their caches.
    pub hasher: BlockHasher,
    /// The API keys and their limits.
    pub auth: Arc<Auth>,
    /// `model.identity()`: requests go only to workers that announce it.
    pub model_identity: u64,
    /// The dashboard's history of this process's metrics.
    pub history: Arc<std::sync::Mutex<dashboard::History>>,
}
