//! Tool calls in OpenAI's answers: `message.tool_calls` of a whole response, and a stream's
//! `delta.tool_calls` chunks (each call's index, id and name first, then its arguments), with the
//! content before the calls streamed as it comes.

use runtime::config::ToolParser;
use serde_json::{Value, json};

use super::super::openai::ResponseMeta;
use super::parse::{self, Call, Parsed};
use super::{ToolChoice, Tools};

/// How a choice's output is read for calls.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    format: ToolParser,
    /// The output is a constrained JSON list of calls (`required`, a named function).
    constrained: bool,
}

impl Reading {
    pub fn of(tools: &Tools) -> Self {
        Self { format: tools.format, constrained: tools.choice != ToolChoice::Auto }
    }

    /// A whole output, read.
    pub fn read(&self, text: &str) -> Parsed {
        if self.constrained { parse::constrained(text) } else { parse::output(self.format, text) }
    }
}

/// `message.tool_calls`.
pub fn calls_json(calls: &[Call]) -> Value {
    calls
        .iter()
        .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
        .collect()
}

/// A streamed choice's output as it grows: content goes out up to where a call may start.
#[derive(Debug)]
pub struct Stream {
    reading: Reading,
    text: String,
    /// Bytes of `text` sent as content.
    sent: usize,
}

impl Stream {
    pub fn new(reading: Reading) -> Self {
        Self { reading, text: String::new(), sent: 0 }
    }

    /// Add generated text; returns the content that can go out now.
    pub fn push(&mut self, text: &str) -> Option<String> {
        self.text.push_str(text);
        if self.reading.constrained {
            return None;
        }
        let ready = parse::streamable(self.reading.format, &self.text).max(self.sent);
        let out = self.text[self.sent..ready].to_string();
        self.sent = ready;
        Some(out).filter(|o| !o.is_empty())
    }

    /// The output ended: the content not sent yet (before any call), and the calls.
    pub fn finish(self) -> (Option<String>, Vec<Call>) {
        let parsed = self.reading.read(&self.text);
        if parsed.calls.is_empty() {
            return (Some(self.text[self.sent..].to_string()).filter(|t| !t.is_empty()), Vec::new());
        }
        // Content after the first call is not streamed (a model rarely writes any).
        let end = match (self.reading.constrained, parse::streamable(self.reading.format, &self.text)) {
            (true, _) => self.sent,
            (false, n) => n.max(self.sent),
        };
        let rest = self.text[self.sent..end].trim_end().to_string();
        (Some(rest).filter(|t| !t.is_empty()), parsed.calls)
    }
}

/// Generated text through a choice's tool reading, when it has one: the content to send now.
pub fn pass(tools: &mut Option<Stream>, text: String) -> Option<String> {
    match tools {
        Some(t) => t.push(&text),
        None => Some(text),
    }
}

/// The end of a choice's output: what its tool reading still holds, and the calls.
pub fn finish(tools: &mut Option<Stream>) -> (Option<String>, Vec<Call>) {
    tools.take().map(Stream::finish).unwrap_or_default()
}

impl ResponseMeta {
    /// A chat chunk of choice `index` whose delta is `delta`, finishing it with `finish`.
    pub fn delta_chunk(&self, index: usize, delta: Value, finish: Option<&str>, with_usage_field: bool) -> Value {
        let choice = json!({ "index": index, "delta": delta, "finish_reason": finish, "logprobs": null });
        let mut v = json!({ "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [choice] });
        if with_usage_field {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The chunks of choice `index`'s calls: for each, its id and name, then its arguments.
    pub fn tool_call_chunks(&self, index: usize, calls: &[Call], with_usage_field: bool) -> Vec<Value> {
        let mut out = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            let head = json!({ "tool_calls": [{ "index": i, "id": c.id, "type": "function", "function": { "name": c.name, "arguments": "" } }] });
            out.push(self.delta_chunk(index, head, None, with_usage_field));
            let args = json!({ "tool_calls": [{ "index": i, "function": { "arguments": c.arguments } }] });
            out.push(self.delta_chunk(index, args, None, with_usage_field));
        }
        out
    }
}
