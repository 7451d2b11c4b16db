//! `POST /tokenize` and `POST /detokenize`, in vLLM's shape: a prompt (or chat messages through
//! the model's template) to token ids, and ids back to text, with this gateway's tokenizer (the
//! workers', as discovery checks).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::Gateway;
use super::error::ApiError;
use super::http;
use super::openai::{self, Message};

#[derive(Debug, Deserialize)]
struct TokenizeBody {
    model: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    /// Whether the model's beginning-of-sequence token is added, as for a completion (default true).
    #[serde(default)]
    add_special_tokens: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct DetokenizeBody {
    model: String,
    tokens: Vec<u32>,
}

fn tokens(gw: &Gateway, bytes: &[u8]) -> Result<Vec<u32>, ApiError> {
    let body: TokenizeBody = openai::deserialize(bytes)?;
    let model = &gw.model;
    if body.model != model.name {
        return Err(ApiError::unknown_model(&body.model, &model.name));
    }
    match (body.prompt, body.messages) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("Give `prompt` or `messages`, not both.", Some("messages"))),
        (None, None) => Err(ApiError::bad_request("Missing required parameter: 'prompt'.", Some("prompt"))),
        (None, Some(messages)) => openai::chat_tokens(model, &openai::chat_messages(messages)?, "messages"),
        (Some(prompt), None) => Ok(if body.add_special_tokens.unwrap_or(true) {
            model.tokenizer.encode_prompt(&prompt)
        } else {
            model.tokenizer.encode(&prompt)
        }),
    }
}

/// `POST /tokenize`: `{"count", "max_model_len", "tokens"}`.
pub async fn tokenize(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let result = async {
        let (bytes, _) = http::accept(&gw, req).await?;
        let gw = gw.clone();
        http::off_runtime(move || tokens(&gw, &bytes).map(|t| (t, gw.model.context_length))).await?
    };
    match result.await {
        Ok((t, context)) => {
            axum::Json(json!({ "count": t.len(), "max_model_len": context, "tokens": t })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /detokenize`: `{"prompt"}`, the ids' text.
pub async fn detokenize(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let result = async {
        let (bytes, _) = http::accept(&gw, req).await?;
        let body: DetokenizeBody = openai::deserialize(&bytes)?;
        if body.model != gw.model.name {
            return Err(ApiError::unknown_model(&body.model, &gw.model.name));
        }
        let vocab = gw.model.tokenizer.vocab_size();
        if let Some(i) = body.tokens.iter().position(|&t| t as usize >= vocab) {
            let message = format!("Token id {} is outside the vocabulary of {vocab}.", body.tokens[i]);
            return Err(ApiError::bad_request(message, Some(&format!("tokens[{i}]"))));
        }
        Ok(gw.model.tokenizer.decode(&body.tokens))
    };
    match result.await {
        Ok(text) => axum::Json(json!({ "prompt": text })).into_response(),
        Err(e) => e.into_response(),
    }
}
