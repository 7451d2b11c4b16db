//! OpenAI's Responses API (`POST /v1/responses`), stateless: `input` as a string or message
//! items, `instructions`, `max_output_tokens`, `temperature`, `top_p`, streaming with its semantic
//! events (`response.created`, `response.output_text.delta`, `response.completed`, …), function
//! tools (calls as `function_call` items, results as `function_call_output` inputs) and
//! `text.format` schemas. Nothing is stored, so `store: true`, `previous_response_id` and
//! `background` are refused by name. The request runs like a chat completion.

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

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Item>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ItemContent {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Item {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<ItemContent>,
    /// `function_call` and `function_call_output` items.
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    output: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Body {
    model: String,
    input: Input,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

/// What the response echoes of its request.
#[derive(Clone, Debug)]
struct Echo {
    instructions: Option<String>,
    max_output_tokens: Option<u32>,
    temperature: f32,
    top_p: f32,
    tools: Value,
    tool_choice: Value,
    text: Value,
}

fn messages(body_input: Input, instructions: Option<&str>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut chat = Vec::new();
    if let Some(i) = instructions {
        chat.push(ChatMessage::new("system", i.to_string()));
    }
    match body_input {
        Input::Text(t) => chat.push(ChatMessage::new("user", t)),
        Input::Items(items) => {
            for (i, item) in items.into_iter().enumerate() {
                let at = |f: &str| format!("input[{i}].{f}");
                match item.kind.as_deref() {
                    // An earlier call and its result, as the chat's assistant and tool turns.
                    Some("function_call") => {
                        let name = item.name.ok_or_else(|| {
                            ApiError::bad_request("A function call needs a `name`.", Some(&at("name")))
                        })?;
                        let text = item.arguments.unwrap_or_else(|| "{}".into());
                        let arguments = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                        let call = json!({ "id": item.call_id, "type": "function", "function": { "name": name, "arguments": arguments } });
                        match chat.last_mut() {
                            Some(m) if m.role == "assistant" && !m.tool_calls.is_empty() => m.tool_calls.push(call),
                            _ => chat.push(ChatMessage {
                                role: "assistant".into(),
                                content: String::new(),
                                tool_calls: vec![call],
                                tool_call_id: None,
                            }),
                        }
                        continue;
                    }
                    Some("function_call_output") => {
                        let content = match item.output {
                            Some(Value::String(s)) => s,
                            Some(v) => v.to_string(),
                            None => String::new(),
                        };
                        chat.push(ChatMessage {
                            role: "tool".into(),
                            content,
                            tool_calls: Vec::new(),
                            tool_call_id: item.call_id,
                        });
                        continue;
                    }
                    _ => {}
                }
                if item.kind.as_deref().is_some_and(|k| k != "message") {
                    let message = format!(
                        "Input items of type `{}` are not supported; send messages.",
                        item.kind.unwrap_or_default()
                    );
                    return Err(ApiError::bad_request(message, Some(&at("type"))));
                }
                let role = item.role.unwrap_or_default();
                if !matches!(role.as_str(), "user" | "assistant" | "system" | "developer") {
                    return Err(ApiError::bad_request(format!("Unknown role `{role}`."), Some(&at("role"))));
                }
                let content = match item.content {
                    None => String::new(),
                    Some(ItemContent::Text(t)) => t,
                    Some(ItemContent::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, p) in parts.into_iter().enumerate() {
                            match (p.kind.as_str(), p.text) {
                                ("input_text" | "output_text" | "text", Some(t)) => text.push_str(&t),
                                (kind, _) => {
                                    return Err(ApiError::bad_request(
                                        format!("Content of type `{kind}` is not supported; send text."),
                                        Some(&format!("input[{i}].content[{j}]")),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                let role = if role == "developer" { "system".to_string() } else { role };
                chat.push(ChatMessage::new(role, content));
            }
        }
    }
    Ok(chat)
}

fn parse(bytes: &[u8], model: &ModelFrontend) -> Result<(ParsedRequest, Echo), ApiError> {
    let body: Body = openai::deserialize(bytes)?;
    if body.model != model.name {
        return Err(ApiError::unknown_model(&body.model, &model.name));
    }
    if body.store == Some(true) {
        return Err(ApiError::bad_request("This server keeps no responses: send `store: false`.", Some("store")));
    }
    for key in ["previous_response_id", "conversation", "background", "reasoning"] {
        let set = body.rest.get(key).is_some_and(|v| !v.is_null() && v != &json!([]) && v != &json!(false));
        if set {
            return Err(ApiError::bad_request(format!("`{key}` is not supported by this server."), Some(key)));
        }
    }
    // `text.format` as chat's `response_format` (the schema's fields one level up here).
    let format = match body.rest.get("text").and_then(|t| t.get("format")) {
        Some(f) if f.get("type").and_then(Value::as_str) == Some("json_schema") => {
            let inner = json!({ "name": f.get("name"), "schema": f.get("schema"), "strict": f.get("strict") });
            Some(json!({ "type": "json_schema", "json_schema": inner }))
        }
        other => other.cloned(),
    };
    let mut fields = serde_json::Map::new();
    if let Some(f) = format {
        fields.insert("response_format".into(), f);
    }
    let rename = |mut e: ApiError| {
        e.param = e
            .param
            .map(|p| p.replace("response_format.json_schema", "text.format").replace("response_format", "text.format"));
        e
    };
    let format_constraint = openai::structured::constraint(&fields, model).map_err(rename)?;
    // Function tools, flat here, as chat's.
    let tools = match body.rest.get("tools").filter(|t| !t.is_null()) {
        Some(Value::Array(list)) => Some(Value::Array(
            list.iter()
                .map(|t| match t.get("type").and_then(Value::as_str) {
                    Some("function") => json!({ "type": "function", "function": {
                        "name": t.get("name"), "description": t.get("description"), "parameters": t.get("parameters") } }),
                    _ => t.clone(),
                })
                .collect(),
        )),
        other => other.cloned(),
    };
    let choice = match body.rest.get("tool_choice") {
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            Some(json!({ "type": "function", "function": { "name": c.get("name") } }))
        }
        other => other.cloned(),
    };
    let tools = super::tools::read(tools.as_ref(), choice.as_ref(), body.rest.get("parallel_tool_calls"), model)
        .map_err(|mut e| {
            e.param =
                e.param.map(|p| p.replace(".function.", ".").replace("tool_choice.function.name", "tool_choice.name"));
            e
        })?;
    let constraint = match (format_constraint, tools.as_ref().and_then(super::tools::Tools::constraint)) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "A required or named call cannot also have a `text.format`.",
                Some("tool_choice"),
            ));
        }
        (c, None) | (None, c) => c,
    };
    let chat = messages(body.input, body.instructions.as_deref())?;
    let (prompt_tokens, _) = openai::chat_tokens_with_tools(model, &chat, tools.as_ref(), "input")?;
    let max = body.max_output_tokens.unwrap_or(model.default_max_tokens);
    if max == 0 {
        return Err(ApiError::bad_request("max_output_tokens must be at least 1.", Some("max_output_tokens")));
    }
    let explicit = body.max_output_tokens.is_some();
    let max_tokens = openai::budget(model, prompt_tokens.len(), max, explicit, "max_output_tokens", "input")?;
    let temperature = body.temperature.or(model.sampling.temperature).unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        let message = format!("temperature = {temperature} is outside [0, 2].");
        return Err(ApiError::bad_request(message, Some("temperature")));
    }
    let top_p = body.top_p.or(model.sampling.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(format!("top_p = {top_p} is outside (0, 1]."), Some("top_p")));
    }
    let d = &model.sampling;
    let sampling = SamplingParams {
        temperature,
        top_p,
        top_k: d.top_k.unwrap_or(0),
        min_p: d.min_p.unwrap_or(0.0),
        repetition_penalty: d.repetition_penalty.unwrap_or(1.0),
        seed: rand::random(),
        max_tokens,
        constraint: constraint.map(Box::new),
        ..Default::default()
    };
    let echo = Echo {
        instructions: body.instructions,
        max_output_tokens: body.max_output_tokens,
        temperature,
        top_p,
        tools: body.rest.get("tools").cloned().unwrap_or(json!([])),
        tool_choice: body.rest.get("tool_choice").cloned().unwrap_or(json!("auto")),
        text: body.rest.get("text").cloned().unwrap_or(json!({ "format": { "type": "text" } })),
    };
    let stream = body.stream.unwrap_or(false);
    Ok((ParsedRequest::single(prompt_tokens, sampling, stream, tools), echo))
}

/// What a response is about.
struct Meta {
    id: String,
    message_id: String,
    created_at: u64,
    model: String,
    echo: Echo,
    /// How the output is read for calls, when the request has tools.
    tools: Option<Reading>,
}

/// How a response ended: its text, calls, reason and usage; and whether its message item stays
/// when it holds no text (a stream announced it at the start).
struct End<'a> {
    text: &'a str,
    calls: &'a [Call],
    reason: FinishReason,
    usage: Usage,
    keep_message: bool,
}

/// A `function_call` output item.
fn call_item(c: &Call, done: bool) -> Value {
    json!({
        "type": "function_call", "id": format!("fc_{}", &c.id["call_".len()..]), "call_id": c.id, "name": c.name,
        "arguments": if done { c.arguments.as_str() } else { "" }, "status": if done { "completed" } else { "in_progress" },
    })
}

impl Meta {
    fn item(&self, text: Option<&str>, done: bool) -> Value {
        let content = match text {
            Some(t) => json!([{ "type": "output_text", "text": t, "annotations": [] }]),
            None => json!([]),
        };
        json!({
            "type": "message", "id": self.message_id, "status": if done { "completed" } else { "in_progress" },
            "role": "assistant", "content": content,
        })
    }

    /// The response object: in progress (`end` None, no output yet) or at its end.
    fn response(&self, end: Option<End<'_>>) -> Value {
        let (status, output, incomplete, usage) = match end {
            None => ("in_progress", json!([]), Value::Null, Value::Null),
            Some(End { text, calls, reason, usage: u, keep_message }) => {
                let (status, incomplete) = match reason {
                    FinishReason::Length => ("incomplete", json!({ "reason": "max_output_tokens" })),
                    _ => ("completed", Value::Null),
                };
                let usage = json!({
                    "input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
                    "total_tokens": u.prompt_tokens + u.completion_tokens,
                    "input_tokens_details": { "cached_tokens": u.cached_tokens }, "output_tokens_details": { "reasoning_tokens": 0 },
                });
                let mut output = Vec::new();
                if keep_message || !text.is_empty() || calls.is_empty() {
                    output.push(self.item(Some(text), true));
                }
                output.extend(calls.iter().map(|c| call_item(c, true)));
                let (status, incomplete) =
                    if calls.is_empty() { (status, incomplete) } else { ("completed", Value::Null) };
                (status, Value::Array(output), incomplete, usage)
            }
        };
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": output, "incomplete_details": incomplete, "error": null, "usage": usage,
            "instructions": self.echo.instructions, "max_output_tokens": self.echo.max_output_tokens,
            "temperature": self.echo.temperature, "top_p": self.echo.top_p,
            "parallel_tool_calls": self.tools.is_some(), "tool_choice": self.echo.tool_choice, "tools": self.echo.tools,
            "store": false, "text": self.echo.text, "metadata": {}, "previous_response_id": null,
        })
    }
}

/// `POST /v1/responses`.
pub async fn responses(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match start(gw, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn start(gw: Arc<Gateway>, req: Request) -> Result<Response, ApiError> {
    let (bytes, incoming) = http::accept(&gw, req).await?;
    let (parsed, echo) = {
        let gw = gw.clone();
        http::off_runtime(move || parse(&bytes, &gw.model)).await??
    };
    let stream = parsed.stream;
    let tools = parsed.tools.as_ref().map(Reading::of);
    let run = http::run(&gw, incoming, parsed, true, stream).await?;
    let meta = Meta {
        tools,
        id: format!("resp_{}", run.id),
        message_id: format!("msg_{}", run.id),
        created_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        model: gw.model.name.clone(),
        echo,
    };
    Ok(match run.first {
        Some(first) if !stream => whole(meta, first, run.rx, run.timing).await,
        first => sse(meta, first, run.rx, run.timing).into_response(),
    })
}

async fn whole(meta: Meta, first: StreamEvent, rx: EventRx, timing: Timing) -> Response {
    match choices::collect(Choice { tools: meta.tools, ..Choice::single(first, rx, timing) }).await {
        Ok((out, usage)) => {
            let end = End { text: &out.text, calls: &out.tool_calls, reason: out.reason, usage, keep_message: false };
            axum::Json(meta.response(Some(end))).into_response()
        }
        Err(e) => ApiError::into_response(e),
    }
}

struct StreamState {
    meta: Meta,
    /// The output read for calls as it grows.
    tools: Option<ToolStream>,
    rx: EventRx,
    queue: VecDeque<Event>,
    text: String,
    sequence: u64,
    done: bool,
    timing: Timing,
}

impl StreamState {
    fn emit(&mut self, kind: &str, mut v: Value) {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        self.queue.push_back(Event::default().event(kind).data(v.to_string()));
    }

    fn text_delta(&mut self, text: String) {
        self.text.push_str(&text);
        let mut v = self.at();
        v["delta"] = json!(text);
        self.emit("response.output_text.delta", v);
    }

    fn at(&self) -> Value {
        json!({ "item_id": self.meta.message_id, "output_index": 0, "content_index": 0 })
    }
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
                            self.text_delta(text);
                        }
                    }
                    // Never asked for here.
                    StreamEvent::Scored { .. } => {}
                    StreamEvent::Finished { reason, usage } => {
                        let (rest, calls) = reply::finish(&mut self.tools);
                        if let Some(rest) = rest {
                            self.text_delta(rest);
                        }
                        let text = self.text.clone();
                        let part = json!({ "type": "output_text", "text": text, "annotations": [] });
                        let mut v = self.at();
                        v["text"] = json!(text);
                        self.emit("response.output_text.done", v);
                        let mut v = self.at();
                        v["part"] = part;
                        self.emit("response.content_part.done", v);
                        let item = self.meta.item(Some(&text), true);
                        self.emit("response.output_item.done", json!({ "output_index": 0, "item": item }));
                        // Each call an item of its own: added, its arguments, done.
                        for (i, c) in calls.iter().enumerate() {
                            let (index, id) = (i + 1, call_item(c, true)["id"].clone());
                            self.emit(
                                "response.output_item.added",
                                json!({ "output_index": index, "item": call_item(c, false) }),
                            );
                            let delta = json!({ "item_id": id, "output_index": index, "delta": c.arguments });
                            self.emit("response.function_call_arguments.delta", delta);
                            let done = json!({ "item_id": id, "output_index": index, "arguments": c.arguments });
                            self.emit("response.function_call_arguments.done", done);
                            self.emit(
                                "response.output_item.done",
                                json!({ "output_index": index, "item": call_item(c, true) }),
                            );
                        }
                        let kind = if reason == FinishReason::Length && calls.is_empty() {
                            "response.incomplete"
                        } else {
                            "response.completed"
                        };
                        let end = End { text: &text, calls: &calls, reason, usage, keep_message: true };
                        let response = self.meta.response(Some(end));
                        self.emit(kind, json!({ "response": response }));
                        self.done = true;
                    }
                    StreamEvent::Failed(f) => self.fail(ApiError::unavailable(f.to_string())),
                }
            }
            Update::Error(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: ApiError) {
        let code = e.code.unwrap_or("server_error");
        self.emit("error", json!({ "code": code, "message": e.message, "param": e.param }));
        self.done = true;
    }
}

fn sse(
    meta: Meta,
    first: Option<StreamEvent>,
    rx: EventRx,
    timing: Timing,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let tools = meta.tools.map(ToolStream::new);
    let mut state =
        StreamState { meta, tools, rx, queue: VecDeque::new(), text: String::new(), sequence: 0, done: false, timing };
    let started = state.meta.response(None);
    state.emit("response.created", json!({ "response": started.clone() }));
    state.emit("response.in_progress", json!({ "response": started }));
    let item = state.meta.item(None, false);
    state.emit("response.output_item.added", json!({ "output_index": 0, "item": item }));
    let mut v = state.at();
    v["part"] = json!({ "type": "output_text", "text": "", "annotations": [] });
    state.emit("response.content_part.added", v);
    if let Some(first) = first {
        state.push(Update::Event(first));
    }
    http::sse(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_becomes_a_chat_and_what_needs_storage_is_refused() {
        let m = openai::tests_model();
        let (p, echo) = parse(
            br#"{"model":"m","instructions":"Brief.","max_output_tokens":2,"temperature":0,
                "input":[{"role":"user","content":"hi"},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"yo"}]},
                         {"role":"user","content":[{"type":"input_text","text":"m"}]}]}"#,
            &m,
        )
        .unwrap();
        let rendered = m.tokenizer.decode(&p.prompt_tokens);
        assert!(
            rendered.contains("system\nBrief.") && rendered.contains("assistant\nyo") && rendered.contains("user\nm\n")
        );
        assert_eq!((p.sampling.max_tokens, echo.temperature), (2, 0.0));
        let (p, _) = parse(br#"{"model":"m","input":"hello"}"#, &m).unwrap();
        assert!(m.tokenizer.decode(&p.prompt_tokens).contains("user\nhello"));
        let bad = |b: &str| parse(b.as_bytes(), &m).unwrap_err().param;
        assert_eq!(bad(r#"{"model":"m","input":"x","store":true}"#).as_deref(), Some("store"));
        assert_eq!(
            bad(r#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#).as_deref(),
            Some("previous_response_id")
        );
        assert_eq!(bad(r#"{"model":"m","input":"x","tools":[{"type":"function"}]}"#).as_deref(), Some("tools[0].name"));
        assert_eq!(bad(r#"{"model":"m","input":[{"type":"function_call"}]}"#).as_deref(), Some("input[0].name"));
        assert_eq!(bad(r#"{"model":"m","input":[{"type":"web_search_call"}]}"#).as_deref(), Some("input[0].type"));
        assert_eq!(
            bad(r#"{"model":"m","input":"x","text":{"format":{"type":"json_schema","name":"t","schema":{"type":"no-such"}}}}"#)
                .as_deref(),
            Some("text.format.schema")
        );
        // A JSON schema format, function tools and an earlier call with its output.
        let roomy = ModelFrontend { context_length: 4096, ..openai::tests_model() };
        let (p, _) = parse(
            br#"{"model":"m","input":"x","text":{"format":{"type":"json_schema","name":"t","schema":{"type":"integer"}}}}"#,
            &roomy,
        )
        .unwrap();
        assert!(p.sampling.constraint.is_some());
        let body = br#"{"model":"m","tools":[{"type":"function","name":"add","parameters":{"type":"object"}}],
            "tool_choice":{"type":"function","name":"add"},
            "input":[{"role":"user","content":"1+2?"},{"type":"function_call","call_id":"call_1","name":"add","arguments":"{\"a\":1}"},
                {"type":"function_call_output","call_id":"call_1","output":"3"}]}"#;
        let (p, _) = parse(body, &roomy).unwrap();
        assert!(p.tools.is_some() && p.sampling.constraint.is_some(), "a named call is constrained");
        let rendered = roomy.tokenizer.decode(&p.prompt_tokens);
        assert!(
            rendered.contains("\"name\":\"add\",\"arguments\":{\"a\":1}") && rendered.contains("<tool_response>\n3\n"),
            "{rendered}"
        );
        assert!(
            parse(br#"{"model":"m","input":"x","store":false,"tools":[],"text":{"format":{"type":"text"}}}"#, &m)
                .is_ok()
        );
    }
}
