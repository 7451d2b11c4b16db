//! Tool calling on chat completions: `tools` and `tool_choice` checked (a 400 names the path
//! inside a bad definition), the tools rendered into the prompt (by the chat template when it
//! knows them, else as a system preamble in the Hermes format), and, for `required` and a named
//! function, a JSON-schema constraint built from the tools' parameters so that the calls are
//! always valid. `parse` reads the calls back out of the output.

pub mod parse;
pub mod reply;

use gpu::chat::ChatMessage;
use gpu::model::ModelFrontend;
use runtime::config::ToolParser;
use runtime::request::{Constraint, Grammar};
use serde_json::{Value, json};

use super::error::ApiError;

/// What the request asked of the model.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// Content or calls, as the model decides (its output is parsed).
    Auto,
    /// At least one call (one with `parallel_tool_calls: false`), of any tool.
    Required,
    /// A call of this function.
    Named(String),
}

/// A request's tools, checked.
#[derive(Clone, Debug)]
pub struct Tools {
    /// OpenAI's tool objects, `{"type": "function", "function": {"name", "description", "parameters"}}`.
    pub defs: Vec<Value>,
    pub choice: ToolChoice,
    pub parallel: bool,
    /// How the output writes calls (when not constrained).
    pub format: ToolParser,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

/// The request's tools: None when it has none, or `tool_choice` is `"none"` (then they are not
/// shown to the model at all).
pub fn read(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<&Value>,
    model: &ModelFrontend,
) -> Result<Option<Tools>, ApiError> {
    let defs = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("`tools` must be a list of tools.", "tools")),
    };
    let choice = tool_choice.filter(|v| !v.is_null());
    if defs.is_empty() {
        if choice.is_some() {
            return Err(bad("`tool_choice` is only allowed when `tools` are specified.", "tool_choice"));
        }
        if parallel.is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "`parallel_tool_calls` is only allowed when `tools` are specified.",
                "parallel_tool_calls",
            ));
        }
        return Ok(None);
    }
    let mut names = Vec::new();
    for (i, t) in defs.iter().enumerate() {
        let at = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad("Only tools of `type: \"function\"` are supported.", &format!("{at}.type")));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return Err(bad("A tool needs a `function` object.", &format!("{at}.function")));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            let message = "A function name is 1 to 64 letters, digits, `_` or `-`.";
            return Err(bad(message, &format!("{at}.function.name")));
        }
        if names.contains(&name) {
            return Err(bad(format!("Two tools are named `{name}`."), &format!("{at}.function.name")));
        }
        names.push(name);
        if f.get("description").is_some_and(|d| !d.is_string() && !d.is_null()) {
            return Err(bad("`description` must be a string.", &format!("{at}.function.description")));
        }
        match f.get("parameters") {
            None | Some(Value::Null) => {}
            Some(p @ Value::Object(_)) => {
                let c = Constraint::new(Grammar::JsonSchema(p.to_string()));
                model.grammars.check(&c).map_err(|e| {
                    bad(format!("The parameters schema does not compile: {e}"), &format!("{at}.function.parameters"))
                })?;
            }
            Some(_) => {
                return Err(bad("`parameters` must be a JSON schema object.", &format!("{at}.function.parameters")));
            }
        }
    }
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(format!("`{other}` is not `none`, `auto`, `required` or a function."), "tool_choice"));
            }
        },
        Some(v) => {
            let name = v.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match (v.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) if names.contains(&n) => ToolChoice::Named(n.to_string()),
                (Some("function"), Some(n)) => {
                    return Err(bad(format!("No tool is named `{n}`."), "tool_choice.function.name"));
                }
                _ => {
                    return Err(bad(
                        "Name a function as {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                        "tool_choice",
                    ));
                }
            }
        }
    };
    let parallel = match parallel {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`parallel_tool_calls` must be a boolean.", "parallel_tool_calls")),
    };
    Ok(Some(Tools { defs, choice, parallel, format: model.tool_parser }))
}

impl Tools {
    fn function(t: &Value) -> (&str, Value) {
        let f = &t["function"];
        let params = match &f["parameters"] {
            Value::Null => json!({ "type": "object" }),
            p => p.clone(),
        };
        (f["name"].as_str().unwrap_or(""), params)
    }

    /// For `required` and a named function: the output is a JSON list of calls
    /// (`[{"name", "arguments"}]`), each of a tool it may call with arguments that match its
    /// schema. None for `auto`.
    pub fn constraint(&self) -> Option<Constraint> {
        let allowed: Vec<Value> = self
            .defs
            .iter()
            .map(Self::function)
            .filter(|(name, _)| match &self.choice {
                ToolChoice::Named(n) => n == name,
                _ => true,
            })
            .map(|(name, params)| {
                json!({
                    "type": "object",
                    "properties": { "name": { "const": name }, "arguments": params },
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        if self.choice == ToolChoice::Auto {
            return None;
        }
        let mut list = json!({ "type": "array", "minItems": 1, "items": { "anyOf": allowed } });
        if !self.parallel || matches!(self.choice, ToolChoice::Named(_)) {
            list["maxItems"] = json!(1);
        }
        Some(Constraint::new(Grammar::JsonSchema(list.to_string())))
    }

    /// The system text that describes the tools to a model whose template does not: the
    /// Hermes format, which `parse::hermes` reads back.
    pub fn preamble(&self) -> String {
        let list: Vec<String> = self.defs.iter().map(Value::to_string).collect();
        format!(
            "You can call functions. They are described here as JSON:\n<tools>\n{}\n</tools>\n\
             To call one, reply with a JSON object of its name and arguments inside tags, one per call:\n\
             <tool_call>\n{{\"name\": \"function_name\", \"arguments\": {{\"argument\": \"value\"}}}}\n</tool_call>",
            list.join("\n")
        )
    }
}

/// The prompt of a chat with tools: by the template when it takes `tools`, else with the
/// preamble as (or before) the system message, the assistant's earlier calls written in the
/// Hermes format and tool results inside `<tool_response>` tags.
pub fn render(model: &ModelFrontend, messages: &[ChatMessage], tools: Option<&Tools>) -> Result<String, String> {
    let Some(tools) = tools else { return model.render_chat(messages) };
    if model.chat.knows_tools() {
        return model.chat.render_with_tools(messages, Some(&tools.defs), true);
    }
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let preamble = tools.preamble();
    let rest = match messages.first() {
        Some(m) if m.role == "system" || m.role == "developer" => {
            out.push(ChatMessage::new("system", format!("{}\n\n{preamble}", m.content)));
            &messages[1..]
        }
        _ => {
            out.push(ChatMessage::new("system", preamble));
            messages
        }
    };
    for m in rest {
        let content = match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let f = &c["function"];
                        format!(
                            "<tool_call>\n{}\n</tool_call>",
                            json!({ "name": f["name"], "arguments": f["arguments"] })
                        )
                    })
                    .collect();
                [m.content.clone(), calls.join("\n")]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            "tool" => format!("<tool_response>\n{}\n</tool_response>", m.content),
            _ => m.content.clone(),
        };
        out.push(ChatMessage::new(m.role.clone(), content));
    }
    model.render_chat(&out)
}

#[cfg(test)]
mod tests;
