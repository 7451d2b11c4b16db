//! Tools in Anthropic's shapes, translated to and from the OpenAI ones the gateway serves:
//! `tools` (`name`, `description`, `input_schema`), `tool_choice` (`auto`, `any`, `tool`,
//! `none`, `disable_parallel_tool_use`), `tool_use` blocks in assistant turns and answers,
//! `tool_result` blocks in user turns.

use gpu::chat::ChatMessage;
use serde_json::{Value, json};

use super::super::error::ApiError;
use super::super::tools::parse::Call;

/// OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, each when set.
pub struct OpenAiTools {
    pub tools: Option<Value>,
    pub choice: Option<Value>,
    pub parallel: Option<Value>,
}

/// Anthropic's tools and choice as OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`.
pub fn to_openai(tools: Option<&Value>, choice: Option<&Value>) -> Result<OpenAiTools, ApiError> {
    let bad = |m: &str, p: &str| ApiError::bad_request(m, Some(p));
    let tools = match tools.filter(|t| !t.is_null()) {
        None => None,
        Some(Value::Array(list)) => Some(Value::Array(
            list.iter()
                .enumerate()
                .map(|(i, t)| {
                    let name = t.get("name").cloned().ok_or_else(|| bad("A tool needs a `name`.", &format!("tools.{i}.name")))?;
                    let schema = t.get("input_schema").cloned().unwrap_or(json!({ "type": "object" }));
                    let description = t.get("description").cloned().unwrap_or(Value::Null);
                    Ok(json!({ "type": "function", "function": { "name": name, "description": description, "parameters": schema } }))
                })
                .collect::<Result<Vec<Value>, ApiError>>()?,
        )),
        Some(_) => return Err(bad("`tools` must be a list.", "tools")),
    };
    let Some(choice) = choice.filter(|c| !c.is_null()) else {
        return Ok(OpenAiTools { tools, choice: None, parallel: None });
    };
    let parallel = choice.get("disable_parallel_tool_use").and_then(Value::as_bool).map(|d| Value::Bool(!d));
    let choice = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(n) => json!({ "type": "function", "function": { "name": n } }),
            None => return Err(bad("`tool_choice` of type `tool` names one.", "tool_choice.name")),
        },
        _ => return Err(bad("`tool_choice.type` is `auto`, `any`, `tool` or `none`.", "tool_choice.type")),
    };
    Ok(OpenAiTools { tools, choice: Some(choice), parallel })
}

/// An error about the OpenAI shape, renamed to the field the Anthropic client sent.
pub fn rename(mut e: ApiError) -> ApiError {
    let Some(p) = e.param.take() else { return e };
    let p = p.replace("tool_choice.function.name", "tool_choice.name");
    let p = match p.strip_prefix("tools[").and_then(|r| r.split_once(']')) {
        Some((i, tail)) => {
            let tail = match tail {
                ".function.parameters" => ".input_schema",
                ".function" | ".type" => "",
                t => t.strip_prefix(".function").unwrap_or(t),
            };
            format!("tools.{i}{tail}")
        }
        None => p,
    };
    e.param = Some(p);
    e
}

/// The chat messages of one Anthropic turn: a user turn's `tool_result` blocks become tool
/// messages (in order, before its text), an assistant turn's `tool_use` blocks its calls.
pub fn turn(role: &str, blocks: &[Value], param: &str) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("{param}[{j}]");
        match (b.get("type").and_then(Value::as_str), role) {
            (Some("text"), _) => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            (Some("tool_use"), "assistant") => {
                let name = b
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::bad_request("A `tool_use` needs a `name`.", Some(&at)))?;
                let input = b.get("input").cloned().unwrap_or(json!({}));
                calls.push(
                    json!({ "id": b.get("id"), "type": "function", "function": { "name": name, "arguments": input } }),
                );
            }
            (Some("tool_result"), "user") => {
                let content = match b.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
                    }
                    _ => String::new(),
                };
                let id = b.get("tool_use_id").and_then(Value::as_str).map(str::to_string);
                out.push(ChatMessage { role: "tool".into(), content, tool_calls: Vec::new(), tool_call_id: id });
            }
            (kind, _) => {
                let kind = kind.unwrap_or("untyped");
                return Err(ApiError::bad_request(
                    format!("Content blocks of type `{kind}` are not supported in a {role} turn."),
                    Some(&at),
                ));
            }
        }
    }
    if !text.is_empty() || !calls.is_empty() || out.is_empty() {
        out.push(ChatMessage { role: role.into(), content: text, tool_calls: calls, tool_call_id: None });
    }
    Ok(out)
}

/// An answer's content blocks: its text (when it has any) and a `tool_use` block per call.
pub fn content(text: &str, calls: &[Call]) -> Value {
    let mut blocks = Vec::new();
    if !text.is_empty() || calls.is_empty() {
        blocks.push(json!({ "type": "text", "text": text }));
    }
    for c in calls {
        blocks.push(tool_use(c, true));
    }
    Value::Array(blocks)
}

/// A `tool_use` block; its input empty when it is to stream after.
pub fn tool_use(c: &Call, with_input: bool) -> Value {
    let input = if with_input { serde_json::from_str(&c.arguments).unwrap_or(json!({})) } else { json!({}) };
    json!({ "type": "tool_use", "id": format!("toolu_{}", &c.id["call_".len()..]), "name": c.name, "input": input })
}
