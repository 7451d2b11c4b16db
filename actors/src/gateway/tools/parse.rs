//! Tool calls read out of a model's output, per family (Hermes/Qwen `<tool_call>` tags, Llama 3
//! JSON, Mistral `[TOOL_CALLS]`), and out of a constrained list of calls. Output that does not
//! parse as calls comes back whole as content, never as an error. `streamable` says how much of
//! a growing output can be streamed as content before a call might start.

use runtime::config::ToolParser;
use serde_json::Value;

/// One call, in OpenAI's terms: `arguments` is JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// An output read for calls: its text outside them (None when there is none), and the calls.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<Call>,
}

impl Parsed {
    fn content(text: &str) -> Self {
        Parsed { content: Some(text.to_string()).filter(|t| !t.is_empty()), calls: Vec::new() }
    }
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_MARK: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";

fn new_id() -> String {
    format!("call_{}", &runtime::ids::RequestId::new_random().0[..24])
}

/// A call from a JSON object with a `name` and its `arguments` (or Llama's `parameters`), an
/// object or JSON text.
fn call(v: &Value) -> Option<Call> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters")).cloned().unwrap_or(Value::Object(Default::default()));
    let arguments = match args {
        Value::Object(_) => args.to_string(),
        Value::String(s) if serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) => s,
        _ => return None,
    };
    Some(Call { id: new_id(), name, arguments })
}

/// Calls read from an unconstrained output, in `format`.
pub fn output(format: ToolParser, text: &str) -> Parsed {
    let parsed = match format {
        ToolParser::Hermes => hermes(text),
        ToolParser::Llama3 => llama3(text),
        ToolParser::Mistral => mistral(text),
    };
    parsed.unwrap_or_else(|| Parsed::content(text))
}

/// Calls read from an output constrained to a JSON list of `{"name", "arguments"}`. A list cut
/// short (by `max_tokens`) gives the calls it completed.
pub fn constrained(text: &str) -> Parsed {
    let mut calls = Vec::new();
    let mut rest = text.trim_start().strip_prefix('[').unwrap_or("");
    loop {
        rest = rest.trim_start();
        let mut items = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match items.next() {
            Some(Ok(v)) => match call(&v) {
                Some(c) => calls.push(c),
                None => break,
            },
            _ => break,
        }
        rest = rest[items.byte_offset()..].trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r,
            None => break,
        }
    }
    if calls.is_empty() { Parsed::content(text) } else { Parsed { content: None, calls } }
}

fn hermes(text: &str) -> Option<Parsed> {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(HERMES_OPEN) {
        content.push_str(&rest[..at]);
        let body = &rest[at + HERMES_OPEN.len()..];
        // An unclosed last call (the output ran out of tokens, or the model wrote no end tag)
        // counts if what follows is one JSON object.
        let (inside, after) = match body.find(HERMES_CLOSE) {
            Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        calls.push(call(&serde_json::from_str::<Value>(inside.trim()).ok()?)?);
        rest = after;
    }
    content.push_str(rest);
    if calls.is_empty() {
        return None;
    }
    Some(Parsed { content: Some(content.trim().to_string()).filter(|c| !c.is_empty()), calls })
}

fn llama3(text: &str) -> Option<Parsed> {
    let trimmed = text.trim_start();
    let body = trimmed.strip_prefix(PYTHON_TAG).unwrap_or(trimmed).trim();
    if !body.starts_with('{') {
        return None;
    }
    // One object, or several separated by `;`.
    let mut calls = Vec::new();
    let mut rest = body;
    loop {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        calls.push(call(&stream.next()?.ok()?)?);
        let after = rest[stream.byte_offset()..].trim_start();
        if after.is_empty() {
            break;
        }
        rest = after.strip_prefix(';')?.trim_start();
        if rest.is_empty() {
            break;
        }
    }
    Some(Parsed { content: None, calls })
}

fn mistral(text: &str) -> Option<Parsed> {
    let at = text.find(MISTRAL_MARK)?;
    let list: Value = serde_json::from_str(text[at + MISTRAL_MARK.len()..].trim()).ok()?;
    let calls: Vec<Call> = list.as_array()?.iter().map(call).collect::<Option<_>>()?;
    if calls.is_empty() {
        return None;
    }
    Some(Parsed { content: Some(text[..at].trim().to_string()).filter(|c| !c.is_empty()), calls })
}

/// How many leading bytes of a growing output can be streamed as content now: those before a
/// call starts, less a tail that might be the start of one.
pub fn streamable(format: ToolParser, text: &str) -> usize {
    let marker = match format {
        ToolParser::Hermes => HERMES_OPEN,
        ToolParser::Mistral => MISTRAL_MARK,
        ToolParser::Llama3 => {
            // A Llama call is the whole output: nothing streams until it is clear there is none.
            let t = text.trim_start();
            let maybe = t.is_empty() || t.starts_with('{') || PYTHON_TAG.starts_with(t) || t.starts_with(PYTHON_TAG);
            return if maybe { 0 } else { text.len() };
        }
    };
    before_marker(text, marker)
}

/// The bytes of `text` before `marker`, or, while it does not hold it, all but a tail that may
/// be the marker's start.
pub fn before_marker(text: &str, marker: &str) -> usize {
    if let Some(at) = text.find(marker) {
        return at;
    }
    let held = (1..marker.len()).rev().find(|&n| {
        text.len() >= n && text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
    });
    text.len() - held.unwrap_or(0)
}

#[cfg(test)]
mod tests;
