//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`), for Claude
//! clients: `system`, `messages` of text blocks, `max_tokens`, `stop_sequences`, `temperature`,
//! `top_p`, `top_k`, streaming with Anthropic's events, usage, and errors in Anthropic's shape.
//! The request runs like a chat completion (the model's chat template, the same driver).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use gpu::chat::ChatMessage;
use gpu::model::ModelFrontend;
use runtime::request::{FinishReason, SamplingParams, StreamEvent, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Gateway;
use super::choices::{self, Choice};
use super::driver::Update;
use super::error::ApiError;
use super::http::{self, EventRx, SsePump, Timing};
use super::openai::{self, ParsedRequest};
use super::tools::parse::Call;
use super::tools::reply::{self, Reading, Stream as ToolStream};

mod tools;

/// Most stop sequences a request may give.
const MAX_STOP_SEQUENCES: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    /// A string, or blocks (`text`, `tool_use`, `tool_result`).
    content: Value,
}

/// A Messages request. Fields outside Anthropic's are accepted and ignored, as its clients
/// send extras; fields that cannot be honoured are refused by name.
#[derive(Debug, Deserialize)]
struct Body {
    model: String,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    system: Option<Content>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

fn text_of(content: Content, param: &str) -> Result<String, ApiError> {
    match content {
        Content::Text(t) => Ok(t),
        Content::Blocks(blocks) => {
            let mut text = String::new();
            for (j, b) in blocks.into_iter().enumerate() {
                match (b.kind.as_str(), b.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::bad_request(
                            format!("Content blocks of type `{kind}` are not supported; send text."),
                            Some(&format!("{param}[{j}]")),
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
}

/// Parse a Messages body against the served model. `counting`: for `count_tokens`, which needs
/// no `max_tokens`.
fn parse(bytes: &[u8], model: &ModelFrontend, counting: bool) -> Result<ParsedRequest, ApiError> {
    let body: Body = openai::deserialize(bytes)?;
    if body.model != model.name {
        return Err(ApiError::unknown_model(&body.model, &model.name));
    }
    if body.rest.get("thinking").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request("`thinking` is not supported by this server.", Some("thinking")));
    }
    let t = tools::to_openai(body.rest.get("tools"), body.rest.get("tool_choice"))?;
    let tools =
        super::tools::read(t.tools.as_ref(), t.choice.as_ref(), t.parallel.as_ref(), model).map_err(tools::rename)?;
    let mut chat = Vec::new();
    if let Some(system) = body.system {
        chat.push(ChatMessage::new("system", text_of(system, "system")?));
    }
    let messages = body
        .messages
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("`messages` must hold at least one message.", Some("messages")))?;
    for (i, m) in messages.into_iter().enumerate() {
        if !matches!(m.role.as_str(), "user" | "assistant") {
            let message = format!("Unknown role `{}`: messages are `user` or `assistant`.", m.role);
            return Err(ApiError::bad_request(message, Some(&format!("messages.{i}.role"))));
        }
        let param = format!("messages.{i}.content");
        match m.content {
            Value::String(t) => chat.push(ChatMessage::new(m.role, t)),
            Value::Array(blocks) => chat.extend(tools::turn(&m.role, &blocks, &param)?),
            _ => return Err(ApiError::bad_request("`content` is a string or a list of blocks.", Some(&param))),
        }
    }
    let (prompt_tokens, _) = openai::chat_tokens_with_tools(model, &chat, tools.as_ref(), "messages")?;
    let max_tokens = match (body.max_tokens, counting) {
        (Some(0), _) => return Err(ApiError::bad_request("max_tokens must be at least 1.", Some("max_tokens"))),
        (Some(m), _) => m,
        (None, true) => 1,
        (None, false) => return Err(ApiError::bad_request("max_tokens: Field required", Some("max_tokens"))),
    };
    let max_tokens = openai::budget(model, prompt_tokens.len(), max_tokens, !counting, "max_tokens", "messages")?;
    let temperature = body.temperature.or(model.sampling.temperature).unwrap_or(1.0);
    if !(0.0..=1.0).contains(&temperature) {
        let message = format!("temperature: {temperature} is outside [0, 1].");
        return Err(ApiError::bad_request(message, Some("temperature")));
    }
    let top_p = body.top_p.or(model.sampling.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(format!("top_p: {top_p} is outside (0, 1]."), Some("top_p")));
    }
    let stop = body.stop_sequences.unwrap_or_default();
    if stop.len() > MAX_STOP_SEQUENCES {
        let message = format!("At most {MAX_STOP_SEQUENCES} stop sequences are allowed; got {}.", stop.len());
        return Err(ApiError::bad_request(message, Some("stop_sequences")));
    }
    let stream = body.stream.unwrap_or(false);
    let sampling = SamplingParams {
        temperature,
        top_p,
        constraint: tools.as_ref().and_then(super::tools::Tools::constraint).map(Box::new),
        top_k: body.top_k.or(model.sampling.top_k).unwrap_or(0),
        min_p: model.sampling.min_p.unwrap_or(0.0),
        repetition_penalty: model.sampling.repetition_penalty.unwrap_or(1.0),
        seed: rand::random(),
        max_tokens,
        stop,
        ..Default::default()
    };
    Ok(ParsedRequest::single(prompt_tokens, sampling, stream, tools))
}

/// Anthropic's name for what went wrong, by status.
fn error_type(e: &ApiError) -> &'static str {
    match e.status.as_u16() {
        400 | 405 | 408 | 415 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 => "overloaded_error",
        _ => "api_error",
    }
}

fn error_body(e: &ApiError) -> Value {
    json!({ "type": "error", "error": { "type": error_type(e), "message": e.message } })
}

/// An error in Anthropic's shape (with `retry-after` where OpenAI's has it).
pub fn error_response(e: ApiError) -> Response {
    let mut resp = (e.status, axum::Json(error_body(&e))).into_response();
    if let Some(secs) = e.retry_after() {
        resp.headers_mut().insert("retry-after", axum::http::HeaderValue::from(secs));
    }
    resp
}

/// Anthropic's `stop_reason` and `stop_sequence`.
fn stop(reason: FinishReason, stops: &[String]) -> (&'static str, Value) {
    match reason {
        FinishReason::Length => ("max_tokens", Value::Null),
        FinishReason::StopSequence(i) => {
            ("stop_sequence", stops.get(i as usize).map_or(Value::Null, |s| Value::String(s.clone())))
        }
        FinishReason::Stop | FinishReason::Cancelled => ("end_turn", Value::Null),
    }
}

fn usage(prompt_tokens: u32, output_tokens: u32) -> Value {
    json!({ "input_tokens": prompt_tokens, "output_tokens": output_tokens })
}

/// What a response is about.
struct Meta {
    id: String,
    model: String,
    prompt_tokens: u32,
    stops: Vec<String>,
    /// How the output is read for tool calls, when the request has tools.
    tools: Option<Reading>,
}

impl Meta {
    fn message(&self, text: &str, reason: Option<FinishReason>, u: Usage, calls: &[Call]) -> Value {
        let (stop_reason, stop_sequence) = match reason {
            Some(_) if !calls.is_empty() => (json!("tool_use"), Value::Null),
            Some(r) => {
                let (why, seq) = stop(r, &self.stops);
                (Value::String(why.into()), seq)
            }
            None => (Value::Null, Value::Null),
        };
        let content = if reason.is_some() { tools::content(text, calls) } else { json!([]) };
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": usage(u.prompt_tokens.max(self.prompt_tokens), u.completion_tokens),
        })
    }
}

/// `POST /v1/messages`.
pub async fn messages(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match start(gw, req).await {
        Ok(resp) => resp,
        Err(e) => error_response(e),
    }
}

async fn start(gw: Arc<Gateway>, req: Request) -> Result<Response, ApiError> {
    let (bytes, incoming) = http::accept(&gw, req).await?;
    let parsed = {
        let gw = gw.clone();
        http::off_runtime(move || parse(&bytes, &gw.model, false)).await??
    };
    let stream = parsed.stream;
    let prompt_tokens = parsed.prompt_tokens.len() as u32;
    let stops = parsed.sampling.stop.clone();
    let parsed_tools = parsed.tools.as_ref().map(Reading::of);
    let run = http::run(&gw, incoming, parsed, true, stream).await?;
    let tools = parsed_tools;
    let meta = Meta { id: format!("msg_{}", run.id), model: gw.model.name.clone(), prompt_tokens, stops, tools };
    Ok(match run.first {
        Some(first) if !stream => whole(meta, first, run.rx, run.timing).await,
        first => sse(meta, first, run.rx, run.timing).into_response(),
    })
}

async fn whole(meta: Meta, first: StreamEvent, rx: EventRx, timing: Timing) -> Response {
    match choices::collect(Choice { tools: meta.tools, ..Choice::single(first, rx, timing) }).await {
        Ok((out, usage)) => {
            axum::Json(meta.message(&out.text, Some(out.reason), usage, &out.tool_calls)).into_response()
        }
        Err(e) => error_response(e),
    }
}

fn event(name: &str, v: Value) -> Event {
    Event::default().event(name).data(v.to_string())
}

struct StreamState {
    meta: Meta,
    /// The output read for tool calls as it grows.
    tools: Option<ToolStream>,
    rx: EventRx,
    queue: VecDeque<Event>,
    done: bool,
    timing: Timing,
}

impl SsePump for StreamState {
    type Input = Update;

    fn ready(&mut self) -> Option<Event> {
        self.queue.pop_front()
    }

    fn done(&self) -> bool {
        self.done
    }

    fn next(&mut self) -> impl std::future::Future<Output = Option<Update>> + Send {
        self.rx.recv()
    }

    fn push(&mut self, item: Update) {
        match item {
            Update::Admitted => {}
            Update::Event(ev) => {
                self.timing.saw(&ev);
                match ev {
                    StreamEvent::Delta { text, .. } => {
                        if let Some(text) = reply::pass(&mut self.tools, text) {
                            self.text_delta(&text);
                        }
                    }
                    // Never asked for here.
                    StreamEvent::Scored { .. } => {}
                    StreamEvent::Finished { reason, usage } => {
                        let (mut why, mut seq) = stop(reason, &self.meta.stops);
                        let (rest, calls) = reply::finish(&mut self.tools);
                        if let Some(rest) = rest {
                            self.text_delta(&rest);
                        }
                        self.queue.push_back(event(
                            "content_block_stop",
                            json!({ "type": "content_block_stop", "index": 0 }),
                        ));
                        // Each call a block of its own: its id and name, then its input as JSON.
                        for (i, c) in calls.iter().enumerate() {
                            let index = i + 1;
                            let start = json!({ "type": "content_block_start", "index": index, "content_block": tools::tool_use(c, false) });
                            self.queue.push_back(event("content_block_start", start));
                            let input = json!({ "type": "input_json_delta", "partial_json": c.arguments });
                            let delta = json!({ "type": "content_block_delta", "index": index, "delta": input });
                            self.queue.push_back(event("content_block_delta", delta));
                            self.queue.push_back(event(
                                "content_block_stop",
                                json!({ "type": "content_block_stop", "index": index }),
                            ));
                        }
                        if !calls.is_empty() {
                            (why, seq) = ("tool_use", Value::Null);
                        }
                        let delta = json!({
                            "type": "message_delta", "delta": { "stop_reason": why, "stop_sequence": seq },
                            "usage": { "output_tokens": usage.completion_tokens },
                        });
                        self.queue.push_back(event("message_delta", delta));
                        self.queue.push_back(event("message_stop", json!({ "type": "message_stop" })));
                        self.done = true;
                    }
                    StreamEvent::Failed(f) => self.fail(ApiError::unavailable(f.to_string())),
                }
            }
            Update::Error(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: ApiError) {
        self.queue.push_back(event("error", error_body(&e)));
        self.done = true;
    }
}

impl StreamState {
    fn text_delta(&mut self, text: &str) {
        let delta =
            json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } });
        self.queue.push_back(event("content_block_delta", delta));
    }
}

fn sse(
    meta: Meta,
    first: Option<StreamEvent>,
    rx: EventRx,
    timing: Timing,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let start = json!({ "type": "message_start", "message": meta.message("", None, Usage::default(), &[]) });
    let block = json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } });
    let queue = VecDeque::from([
        event("message_start", start),
        event("content_block_start", block),
        event("ping", json!({ "type": "ping" })),
    ]);
    let tools = meta.tools.map(ToolStream::new);
    let mut state = StreamState { meta, tools, rx, queue, done: false, timing };
    if let Some(first) = first {
        state.push(Update::Event(first));
    }
    http::sse(state)
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens, as the model's template renders it.
pub async fn count_tokens(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let counted = async {
        let (bytes, _) = http::accept(&gw, req).await?;
        let gw = gw.clone();
        http::off_runtime(move || parse(&bytes, &gw.model, true)).await?
    };
    match counted.await {
        Ok(p) => axum::Json(json!({ "input_tokens": p.prompt_tokens.len() })).into_response(),
        Err(e) => error_response(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelFrontend {
        openai::tests_model()
    }

    #[test]
    fn messages_become_a_chat_and_errors_name_their_field() {
        let m = model();
        let body = r#"{"model":"m","max_tokens":5,"system":[{"type":"text","text":"Be brief."}],
            "messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"text","text":"yo"}]}],
            "stop_sequences":["END"],"temperature":0.5,"top_k":3,"metadata":{"user_id":"x"}}"#;
        let p = parse(body.as_bytes(), &m, false).unwrap();
        let rendered = m.tokenizer.decode(&p.prompt_tokens);
        assert!(
            rendered.contains("system\nBe brief.")
                && rendered.contains("user\nhi")
                && rendered.contains("assistant\nyo")
        );
        assert_eq!((p.sampling.max_tokens, p.sampling.top_k, p.sampling.temperature), (5, 3, 0.5));
        assert_eq!(p.sampling.stop, vec!["END".to_string()]);
        let bad = |b: &str| parse(b.as_bytes(), &m, false).unwrap_err();
        let e = bad(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = bad(r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image"}]}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages.0.content[0]"));
        let e = bad(r#"{"model":"m","max_tokens":5,"temperature":1.5,"messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = bad(r#"{"model":"other","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(error_body(&e)["error"]["type"], "not_found_error");
        assert_eq!(
            error_body(&bad("{")),
            json!({ "type": "error", "error": { "type": "invalid_request_error", "message": bad("{").message } })
        );
        // Tools: Anthropic's shapes in, errors naming Anthropic's fields.
        let tools = r#""tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}]"#;
        let roomy = ModelFrontend { context_length: 4096, ..model() };
        let with = |extra: &str| {
            format!(
                r#"{{"model":"m","max_tokens":20,{tools},{extra}"messages":[{{"role":"user","content":"Weather in Oslo?"}},
            {{"role":"assistant","content":[{{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{{"city":"Oslo"}}}}]}},
            {{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","content":"-3 C"}},{{"type":"text","text":"Thanks"}}]}}]}}"#
            )
        };
        let p = parse(with(r#""tool_choice":{"type":"any"},"#).as_bytes(), &roomy, false).unwrap();
        assert!(p.sampling.constraint.is_some(), "any: a constrained call");
        let rendered = roomy.tokenizer.decode(&p.prompt_tokens);
        assert!(
            rendered.contains("get_weather") && rendered.contains("<tool_response>\n-3 C\n</tool_response>"),
            "{rendered}"
        );
        assert!(
            rendered.contains("\"arguments\":{\"city\":\"Oslo\"}") && rendered.contains("user\nThanks"),
            "{rendered}"
        );
        let p = parse(with("").as_bytes(), &roomy, false).unwrap();
        assert!(p.tools.is_some() && p.sampling.constraint.is_none(), "auto by default");
        let p = parse(with(r#""tool_choice":{"type":"none"},"#).as_bytes(), &roomy, false).unwrap();
        assert!(p.tools.is_none());
        let bad_schema = with("").replace(r#""type":"string""#, r#""type":"no-such""#);
        assert_eq!(
            parse(bad_schema.as_bytes(), &roomy, false).unwrap_err().param.as_deref(),
            Some("tools.0.input_schema")
        );
        let unknown = with(r#""tool_choice":{"type":"tool","name":"nope"},"#);
        assert_eq!(parse(unknown.as_bytes(), &roomy, false).unwrap_err().param.as_deref(), Some("tool_choice.name"));
        // count_tokens needs no max_tokens.
        assert!(parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, &m, true).is_ok());
    }

    #[test]
    fn stop_reasons_in_anthropic_terms() {
        let stops = vec!["END".to_string(), "STOP".to_string()];
        assert_eq!(stop(FinishReason::StopSequence(1), &stops), ("stop_sequence", json!("STOP")));
        assert_eq!(stop(FinishReason::Stop, &stops), ("end_turn", Value::Null));
        assert_eq!(stop(FinishReason::Length, &stops), ("max_tokens", Value::Null));
    }
}
