//! OpenAI request bodies: parsing, validation into a worker request, and response bodies.

use serde::Deserialize;
use serde_json::{Value, json};

use gpu::chat::ChatMessage;
use gpu::model::ModelFrontend;
use runtime::request::{FinishReason, SamplingParams, Usage};

use super::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    /// An assistant's calls: `{"id", "type": "function", "function": {"name", "arguments"}}`.
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallIn>>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ToolCallIn {
    #[serde(default)]
    id: Option<String>,
    function: FunctionIn,
}

#[derive(Debug, Deserialize)]
pub(super) struct FunctionIn {
    name: String,
    /// JSON text, as OpenAI sends it.
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

/// Fields shared by both endpoints. Unknown fields are accepted and ignored, as OpenAI's own
/// clients send extras; fields we cannot honour are refused by `refuse_unsupported`.
#[derive(Debug, Deserialize)]
struct Body {
    model: String,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<Prompt>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    stop: Option<StopField>,
    #[serde(default)]
    seed: Option<i64>,
    /// Extension (as in vLLM): keep generating past end-of-sequence, for benchmarks.
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    /// Extensions, as in vLLM.
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    min_p: Option<f32>,
    /// Token id (as a string, OpenAI's shape) to a bias in [-100, 100].
    #[serde(default)]
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Chat: a boolean; completions: how many alternatives (0–20). Read per endpoint.
    #[serde(default)]
    logprobs: Option<Value>,
    /// Chat: alternatives per token (0–20), with `logprobs: true`.
    #[serde(default)]
    top_logprobs: Option<u32>,
    /// Typed so that a wrong type is refused; otherwise not used.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    #[serde(default)]
    tool_choice: Option<Value>,
    /// Completions: return the prompt before the completion (scored with `logprobs`).
    #[serde(default)]
    echo: Option<bool>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

/// A validated request, ready for a worker.
#[derive(Clone, Debug)]
pub struct ParsedRequest {
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices to generate (choice `i` samples with `seed + i`).
    pub n: u32,
    /// Completions' `echo`: the prompt text each choice starts with.
    pub echo: Option<String>,
    /// Chat's tools: the output is read for calls.
    pub tools: Option<super::tools::Tools>,
    /// Chat: a `<think>` block at the answer's start is its reasoning (Some: whether the prompt
    /// opened it).
    pub reasoning: Option<bool>,
}

impl ParsedRequest {
    /// A request of one choice, no echo and no reasoning split (the Responses and Messages
    /// routes').
    pub fn single(
        prompt_tokens: Vec<u32>,
        sampling: SamplingParams,
        stream: bool,
        tools: Option<super::tools::Tools>,
    ) -> Self {
        Self { prompt_tokens, sampling, stream, include_usage: false, n: 1, echo: None, tools, reasoning: None }
    }
}

/// Most choices one request may ask for.
pub const MAX_CHOICES: u32 = 16;

const MAX_STOPS: usize = 4;

/// A JSON body as `T`: malformed JSON, or a field of the wrong type (named in `param`), is a 400.
pub(super) fn deserialize<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(format!("Malformed JSON body: {inner}"), None);
        }
        let param = (path != "." && path != "?").then_some(path.as_str());
        ApiError::bad_request(format!("Invalid request body: {inner}"), param)
    })
}

/// The served model of the unit tests: the test tokenizer, ChatML, a context of 64.
#[cfg(test)]
pub(crate) fn tests_model() -> ModelFrontend {
    use gpu::executor::TestTokenizer;
    ModelFrontend {
        name: "m".into(),
        tokenizer: std::sync::Arc::new(TestTokenizer::default()),
        chat: std::sync::Arc::new(gpu::chat::ChatTemplate::new(gpu::chat::CHATML, "", "<|im_end|>").unwrap()),
        context_length: 64,
        default_max_tokens: 20,
        longest_token: gpu::model::longest_token(&TestTokenizer::default()),
        sampling: Default::default(),
        grammars: std::sync::Arc::new(gpu::constraint::Grammars::new(std::sync::Arc::new(TestTokenizer::default()))),
        tool_parser: runtime::config::ToolParser::Hermes,
    }
}

/// Parse and validate a body for `endpoint` against the served model.
pub fn parse(endpoint: Endpoint, bytes: &[u8], model: &ModelFrontend) -> Result<ParsedRequest, ApiError> {
    let mut body: Body = deserialize(bytes)?;
    if body.model != model.name {
        return Err(ApiError::unknown_model(&body.model, &model.name));
    }
    refuse_unsupported(&body.rest)?;
    refuse_dangling(&body)?;
    let body_controls = Controls {
        presence_penalty: body.presence_penalty,
        frequency_penalty: body.frequency_penalty,
        repetition_penalty: body.repetition_penalty,
        min_p: body.min_p,
        logit_bias: body.logit_bias.take(),
    };
    let n = body.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ApiError::bad_request(format!("n = {n} is outside [1, {MAX_CHOICES}]."), Some("n")));
    }
    if let Some(best_of) = body.rest.get("best_of").filter(|v| !v.is_null())
        && best_of.as_u64() != Some(u64::from(n))
    {
        let message = "`best_of` other than `n` is not supported: every generated choice is returned.";
        return Err(ApiError::bad_request(message, Some("best_of")));
    }
    let temperature = body.temperature.or(model.sampling.temperature).unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            format!("temperature = {temperature} is outside [0, 2]."),
            Some("temperature"),
        ));
    }
    let top_p = body.top_p.or(model.sampling.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(format!("top_p = {top_p} is outside (0, 1]."), Some("top_p")));
    }
    let top_k = match body.top_k {
        None => model.sampling.top_k.unwrap_or(0),
        Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => u32::try_from(k).unwrap_or(u32::MAX),
        Some(k) => {
            return Err(ApiError::bad_request(format!("top_k = {k} must be positive, or -1 for none."), Some("top_k")));
        }
    };
    let stop = match body.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::bad_request(
            format!("At most {MAX_STOPS} stop sequences are allowed; got {}.", stop.len()),
            Some("stop"),
        ));
    }
    let tools = match endpoint {
        Endpoint::Chat => super::tools::read(
            body.rest.get("tools"),
            body.tool_choice.as_ref(),
            body.rest.get("parallel_tool_calls"),
            model,
        )?,
        Endpoint::Completion => {
            let set = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
            for (key, value) in [
                ("tools", body.rest.get("tools")),
                ("tool_choice", body.tool_choice.as_ref()),
                ("parallel_tool_calls", body.rest.get("parallel_tool_calls")),
            ] {
                if set(value) {
                    return Err(ApiError::bad_request(format!("`{key}` is a chat completions field."), Some(key)));
                }
            }
            None
        }
    };
    let mut reasoning = None;
    let prompt_tokens = match endpoint {
        Endpoint::Chat => {
            if body.prompt.is_some() {
                return Err(ApiError::bad_request("Chat completions take `messages`, not `prompt`.", Some("prompt")));
            }
            let messages = body
                .messages
                .ok_or_else(|| ApiError::bad_request("Missing required parameter: 'messages'.", Some("messages")))?;
            let (tokens, inside) =
                chat_tokens_with_tools(model, &chat_messages(messages)?, tools.as_ref(), "messages")?;
            reasoning = Some(inside);
            tokens
        }
        Endpoint::Completion => match &body.prompt {
            None => {
                return Err(ApiError::bad_request("Missing required parameter: 'prompt'.", Some("prompt")));
            }
            Some(Prompt::Text(t)) => {
                fits_context(model, t, "prompt")?;
                model.tokenizer.encode_prompt(t)
            }
            Some(Prompt::Texts(v)) if v.len() == 1 => {
                fits_context(model, &v[0], "prompt")?;
                model.tokenizer.encode_prompt(&v[0])
            }
            Some(Prompt::Texts(v)) => {
                return Err(ApiError::bad_request(
                    format!("Batched prompts are not supported: got {} prompts, send one.", v.len()),
                    Some("prompt"),
                ));
            }
            Some(Prompt::Tokens(ids)) => ids.clone(),
        },
    };
    if let Some(bad) = prompt_tokens.iter().find(|&&t| t as usize >= model.tokenizer.vocab_size()) {
        return Err(ApiError::bad_request(format!("Token id {bad} is outside the vocabulary."), Some("prompt")));
    }
    if prompt_tokens.is_empty() {
        return Err(ApiError::bad_request(
            "The prompt is empty.",
            Some(if endpoint == Endpoint::Chat { "messages" } else { "prompt" }),
        ));
    }
    let default_max = match endpoint {
        Endpoint::Chat => model.default_max_tokens,
        Endpoint::Completion => 16,
    };
    let (max_tokens, param) = match (body.max_completion_tokens, body.max_tokens) {
        (Some(m), _) => (m, "max_completion_tokens"),
        (None, Some(m)) => (m, "max_tokens"),
        (None, None) => (default_max, "max_tokens"),
    };
    let echo = match (endpoint, body.echo) {
        (Endpoint::Chat, Some(true)) => {
            return Err(ApiError::bad_request("`echo` is a completions field.", Some("echo")));
        }
        (Endpoint::Completion, Some(true)) => Some(match body.prompt {
            Some(Prompt::Text(t)) => t,
            Some(Prompt::Texts(mut v)) => v.remove(0),
            _ => model.tokenizer.decode(&prompt_tokens),
        }),
        _ => None,
    };
    // Nothing to generate is a request only to echo (and score) the prompt.
    if max_tokens == 0 && echo.is_none() {
        return Err(ApiError::bad_request(format!("{param} must be at least 1 (or 0 with `echo`)."), Some(param)));
    }
    let adjust = logit_controls(&body_controls, model)?;
    let logprobs = logprobs_asked(endpoint, body.logprobs.as_ref(), body.top_logprobs)?;
    let prompt_logprobs = if echo.is_some() { logprobs } else { None };
    let constraint = match (structured::constraint(&body.rest, model)?, tools.as_ref().and_then(|t| t.constraint())) {
        (Some(_), Some(_)) => {
            let message = "A required or named tool call cannot also have a `response_format`.";
            return Err(ApiError::bad_request(message, Some("tool_choice")));
        }
        (c, None) | (None, c) => c,
    };
    let explicit_max = body.max_completion_tokens.or(body.max_tokens).is_some();
    let prompt_param = if endpoint == Endpoint::Chat { "messages" } else { "prompt" };
    let max_tokens = budget(model, prompt_tokens.len(), max_tokens, explicit_max, param, prompt_param)?;
    let stream = body.stream.unwrap_or(false);
    Ok(ParsedRequest {
        prompt_tokens,
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k,
            seed: body.seed.map_or_else(rand::random, |s| s as u64),
            max_tokens,
            stop,
            ignore_eos: body.ignore_eos.unwrap_or(false),
            presence_penalty: adjust.presence_penalty,
            frequency_penalty: adjust.frequency_penalty,
            repetition_penalty: adjust.repetition_penalty,
            min_p: adjust.min_p,
            logit_bias: adjust.logit_bias,
            logprobs,
            prompt_logprobs,
            constraint: constraint.map(Box::new),
            // The caller's key sets it, after parsing.
            priority: 0,
        },
        stream,
        include_usage: stream && body.stream_options.is_some_and(|o| o.include_usage),
        n,
        echo,
        tools,
        reasoning,
    })
}

/// Refuse a text that cannot fit the context whatever its tokens, before tokenizing it: it has at
/// least `len / longest_token` of them.
fn fits_context(model: &ModelFrontend, text: &str, param: &str) -> Result<(), ApiError> {
    let context = model.context_length as usize;
    if text.len() / model.longest_token.max(1) >= context {
        metrics::counter!("armature_http_refused_total", "reason" => "cannot_fit").increment(1);
        return Err(ApiError::cannot_fit(text.len(), model.context_length, param));
    }
    Ok(())
}

/// A chat's prompt tokens: its template rendered, sized up against the context, tokenized
/// (`param` names the messages field in errors).
pub(super) fn chat_tokens(model: &ModelFrontend, messages: &[ChatMessage], param: &str) -> Result<Vec<u32>, ApiError> {
    chat_tokens_with_tools(model, messages, None, param).map(|(tokens, _)| tokens)
}

/// `chat_tokens`, with the request's tools described to the model; also whether the prompt
/// ends inside an opened `<think>` block (a reasoning model's template may open it).
pub(super) fn chat_tokens_with_tools(
    model: &ModelFrontend,
    messages: &[ChatMessage],
    tools: Option<&super::tools::Tools>,
    param: &str,
) -> Result<(Vec<u32>, bool), ApiError> {
    let prompt = super::tools::render(model, messages, tools)
        .map_err(|e| ApiError::bad_request(format!("The chat template rejected these messages: {e}"), Some(param)))?;
    fits_context(model, &prompt, param)?;
    let inside = prompt.trim_end().ends_with("<think>");
    Ok((model.tokenizer.encode_prompt(&prompt), inside))
}

/// How many tokens a request of `prompt_len` tokens may generate: `max_tokens` (named `param`),
/// cut to the context when the client did not set it (`explicit`), refused when it did and it
/// does not fit, or when the prompt alone does not (`prompt_param`).
pub(super) fn budget(
    model: &ModelFrontend,
    prompt_len: usize,
    max_tokens: u32,
    explicit: bool,
    param: &str,
    prompt_param: &str,
) -> Result<u32, ApiError> {
    let context = model.context_length as usize;
    if prompt_len >= context {
        return Err(ApiError::bad_request(
            format!("This model's maximum context length is {context} tokens; the prompt has {prompt_len} tokens."),
            Some(prompt_param),
        )
        .with_code("context_length_exceeded"));
    }
    if explicit && prompt_len + max_tokens as usize > context {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {context} tokens; the prompt has {prompt_len} and {param} asks for {max_tokens}."
            ),
            Some(param),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(max_tokens.min((context - prompt_len) as u32))
}

/// Most alternatives per token a request may ask for (OpenAI allows 20 in chat, 5 in completions).
const MAX_TOP_LOGPROBS: u32 = 20;

/// How many alternatives per token the request wants, if it wants log probabilities: chat's
/// `logprobs: true` with `top_logprobs`, or completions' `logprobs: N`.
fn logprobs_asked(endpoint: Endpoint, logprobs: Option<&Value>, top: Option<u32>) -> Result<Option<u32>, ApiError> {
    let range = |n: u32, param: &str| {
        if n > MAX_TOP_LOGPROBS {
            let message = format!("{param} = {n} is outside [0, {MAX_TOP_LOGPROBS}].");
            return Err(ApiError::bad_request(message, Some(param)));
        }
        Ok(n)
    };
    match endpoint {
        Endpoint::Chat => {
            let asked = match logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::bad_request("`logprobs` must be a boolean.", Some("logprobs"))),
            };
            match (asked, top) {
                (false, Some(_)) => {
                    Err(ApiError::bad_request("`top_logprobs` needs `logprobs` set to true.", Some("top_logprobs")))
                }
                (false, None) => Ok(None),
                (true, top) => Ok(Some(range(top.unwrap_or(0), "top_logprobs")?)),
            }
        }
        Endpoint::Completion => {
            if top.is_some() {
                let message = "`top_logprobs` is a chat field; completions take `logprobs: N`.";
                return Err(ApiError::bad_request(message, Some("top_logprobs")));
            }
            match logprobs {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) => Ok(Some(range(n, "logprobs")?)),
                    None => Err(ApiError::bad_request("`logprobs` must be an integer in [0, 20].", Some("logprobs"))),
                },
            }
        }
    }
}

/// Fields that only mean something with another, refused without it as OpenAI refuses them.
fn refuse_dangling(body: &Body) -> Result<(), ApiError> {
    if body.stream_options.is_some() && body.stream != Some(true) {
        return Err(ApiError::bad_request(
            "`stream_options` is only allowed when `stream` is true.",
            Some("stream_options"),
        ));
    }
    Ok(())
}

/// The fields that change the logits before a token is chosen, as sent.
struct Controls {
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    min_p: Option<f32>,
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
}

/// The controls, checked: each out-of-range value is a 400 naming its field.
fn logit_controls(c: &Controls, model: &ModelFrontend) -> Result<SamplingParams, ApiError> {
    let within = |name: &str, v: Option<f32>, lo: f32, hi: f32, default: f32| match v {
        None => Ok(default),
        Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
        Some(v) => Err(ApiError::bad_request(format!("{name} = {v} is outside [{lo}, {hi}]."), Some(name))),
    };
    let presence_penalty = within("presence_penalty", c.presence_penalty, -2.0, 2.0, 0.0)?;
    let frequency_penalty = within("frequency_penalty", c.frequency_penalty, -2.0, 2.0, 0.0)?;
    let min_p = within("min_p", c.min_p.or(model.sampling.min_p), 0.0, 1.0, 0.0)?;
    let repetition_penalty = match c.repetition_penalty.or(model.sampling.repetition_penalty) {
        None => 1.0,
        Some(r) if r.is_finite() && r > 0.0 && r <= 10.0 => r,
        Some(r) => {
            let message = format!("repetition_penalty = {r} is outside (0, 10] (1 is none).");
            return Err(ApiError::bad_request(message, Some("repetition_penalty")));
        }
    };
    let mut logit_bias = Vec::new();
    for (key, &bias) in c.logit_bias.iter().flatten() {
        let param = format!("logit_bias.{key}");
        let id: u32 =
            key.parse().ok().filter(|&id| (id as usize) < model.tokenizer.vocab_size()).ok_or_else(|| {
                ApiError::bad_request(format!("`{key}` is not a token id of this model."), Some(&param))
            })?;
        if !(bias.is_finite() && (-100.0..=100.0).contains(&bias)) {
            return Err(ApiError::bad_request(format!("The bias {bias} is outside [-100, 100]."), Some(&param)));
        }
        logit_bias.push((id, bias));
    }
    Ok(SamplingParams {
        presence_penalty,
        frequency_penalty,
        repetition_penalty,
        min_p,
        logit_bias,
        ..Default::default()
    })
}

fn refuse_unsupported(rest: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let set = |k: &str| rest.get(k).filter(|v| !v.is_null());
    for key in ["functions", "suffix"] {
        if set(key)
            .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()) && v.as_object().is_none_or(|o| !o.is_empty()))
        {
            return Err(ApiError::bad_request(format!("`{key}` is not supported by this server."), Some(key)));
        }
    }
    // OpenAI fields that ask for what this server does not do: refused rather than ignored.
    for (key, what) in [
        ("audio", "audio output"),
        ("prediction", "predicted outputs"),
        ("web_search_options", "web search"),
        ("reasoning_effort", "reasoning effort (the served model does not reason)"),
        ("function_call", "`function_call` (and `functions`)"),
    ] {
        if set(key).is_some() {
            return Err(ApiError::bad_request(format!("{what} is not supported by this server."), Some(key)));
        }
    }
    if let Some(m) = set("modalities")
        && m.as_array().is_none_or(|a| a.iter().any(|x| x.as_str() != Some("text")))
    {
        return Err(ApiError::bad_request("Only the `text` modality is supported.", Some("modalities")));
    }
    if set("store").is_some_and(|v| v != &Value::Bool(false)) {
        return Err(ApiError::bad_request("This server stores no completions: send `store: false`.", Some("store")));
    }
    Ok(())
}

pub(super) fn chat_messages(messages: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty.", Some("messages")));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(ApiError::bad_request(
                    format!("Unknown role `{}`.", m.role),
                    Some(&format!("messages[{i}].role")),
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::bad_request(
                                    format!("Content part type `{kind}` is not supported; send text."),
                                    Some(&format!("messages[{i}].content[{j}]")),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            // As Hugging Face templates take them: the arguments an object where they parse.
            let tool_calls = m
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    let text = c.function.arguments.unwrap_or_else(|| "{}".into());
                    let arguments = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                    json!({ "id": c.id, "type": "function", "function": { "name": c.function.name, "arguments": arguments } })
                })
                .collect();
            Ok(ChatMessage { role: m.role, content, tool_calls, tool_call_id: m.tool_call_id })
        })
        .collect()
}

pub fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

/// Identity of one response, shared by all its chunks.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
}

/// One finished choice of a whole response.
#[derive(Clone, Debug)]
pub struct ChoiceOut {
    pub text: String,
    pub reason: FinishReason,
    pub logprobs: Option<Value>,
    /// Calls read from a chat output (the text is then what is outside them).
    pub tool_calls: Vec<super::tools::parse::Call>,
    /// A chat answer's `<think>` block.
    pub reasoning: Option<String>,
}

impl ResponseMeta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    /// The whole response: its choices in order, and the usage of all of them.
    pub fn full(&self, choices: &[ChoiceOut], usage: Usage) -> Value {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let mut choice = self.full_choice(index, c);
                if let Some(r) = &c.reasoning {
                    choice["message"]["reasoning_content"] = json!(r);
                }
                choice
            })
            .collect();
        json!({ "id": self.id, "object": self.object(false), "created": self.created, "model": self.model, "choices": choices, "usage": usage_json(usage) })
    }

    fn full_choice(&self, index: usize, c: &ChoiceOut) -> Value {
        let logprobs = c.logprobs.clone().unwrap_or(Value::Null);
        let reason = c.reason.as_openai();
        match self.endpoint {
            Endpoint::Chat if !c.tool_calls.is_empty() => {
                let content = Some(&c.text).filter(|t| !t.is_empty());
                let calls = super::tools::reply::calls_json(&c.tool_calls);
                json!({
                    "index": index, "message": { "role": "assistant", "content": content, "tool_calls": calls },
                    "finish_reason": "tool_calls", "logprobs": logprobs,
                })
            }
            Endpoint::Chat => json!({
                "index": index, "message": { "role": "assistant", "content": c.text },
                "finish_reason": reason, "logprobs": logprobs,
            }),
            Endpoint::Completion => {
                json!({ "index": index, "text": c.text, "finish_reason": reason, "logprobs": logprobs })
            }
        }
    }

    /// A streamed chunk of choice `index`: text (or the assistant role opener when `text` is None
    /// and it is a chat) and, on its last one, the finish reason; `logprobs` are its tokens'.
    pub fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        reason: Option<FinishReason>,
        with_usage_field: bool,
        logprobs: Option<Value>,
    ) -> Value {
        let finish = reason.map(FinishReason::as_openai);
        let logprobs = logprobs.unwrap_or(Value::Null);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let delta = match (text, reason) {
                    (Some(t), _) => json!({ "content": t }),
                    (None, None) => json!({ "role": "assistant", "content": "" }),
                    (None, Some(_)) => json!({}),
                };
                json!({ "index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs })
            }
            Endpoint::Completion => {
                json!({ "index": index, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": logprobs })
            }
        };
        let mut v = json!({ "id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice] });
        if with_usage_field {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The usage chunk of `stream_options.include_usage`.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({ "id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [], "usage": usage_json(usage) })
    }
}

pub mod logprobs;
pub(super) mod structured;

#[cfg(test)]
mod tests;
