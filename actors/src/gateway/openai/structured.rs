//! Structured outputs: OpenAI's `response_format` (`json_object`, `json_schema`) and vLLM's
//! `structured_outputs` (`json`, `regex`, `choice`, `grammar`, `json_object`), read into the
//! request's `Constraint` and compiled once here, so that one that cannot compile is a 400
//! naming its field before anything is placed.

use gpu::model::ModelFrontend;
use runtime::request::{Constraint, Grammar};
use serde_json::{Map, Value};

use super::super::error::ApiError;

/// The constraint a request's fields ask for (None: free text).
pub fn constraint(rest: &Map<String, Value>, model: &ModelFrontend) -> Result<Option<Constraint>, ApiError> {
    let set = |k: &str| rest.get(k).filter(|v| !v.is_null());
    let from_format = match set("response_format") {
        None => None,
        Some(rf) => response_format(rf)?,
    };
    let from_vllm = match set("structured_outputs") {
        None => None,
        Some(so) => Some(structured_outputs(so)?),
    };
    let (grammar, param) = match (from_format, from_vllm) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            let message = "Send `response_format` or `structured_outputs`, not both.";
            return Err(ApiError::bad_request(message, Some("structured_outputs")));
        }
        (Some(g), None) | (None, Some(g)) => g,
    };
    let constraint = Constraint::new(grammar);
    model
        .grammars
        .check(&constraint)
        .map_err(|e| ApiError::bad_request(format!("The constraint does not compile: {e}"), Some(&param)))?;
    Ok(Some(constraint))
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

/// OpenAI's `response_format`, with the field a compile error names.
fn response_format(rf: &Value) -> Result<Option<(Grammar, String)>, ApiError> {
    let kind = rf.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some((Grammar::JsonObject, "response_format".into()))),
        Some("json_schema") => {
            let Some(js) = rf.get("json_schema").and_then(Value::as_object) else {
                return Err(bad(
                    "`json_schema` must be an object with `name` and `schema`.",
                    "response_format.json_schema",
                ));
            };
            if js.get("name").is_some_and(|n| !n.is_string()) {
                return Err(bad("`name` must be a string.", "response_format.json_schema.name"));
            }
            if js.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(bad("`strict` must be a boolean.", "response_format.json_schema.strict"));
            }
            let param = "response_format.json_schema.schema".to_string();
            match js.get("schema") {
                // OpenAI's default: any JSON object.
                None | Some(Value::Null) => Ok(Some((Grammar::JsonObject, param))),
                Some(s @ (Value::Object(_) | Value::Bool(_))) => Ok(Some((Grammar::JsonSchema(s.to_string()), param))),
                Some(_) => Err(bad("`schema` must be a JSON schema (an object).", &param)),
            }
        }
        Some(other) => Err(bad(
            format!("response_format type `{other}` is not one of `text`, `json_object`, `json_schema`."),
            "response_format.type",
        )),
        None => Err(bad("response_format needs a `type`.", "response_format.type")),
    }
}

/// vLLM's `structured_outputs`: exactly one of its kinds.
fn structured_outputs(so: &Value) -> Result<(Grammar, String), ApiError> {
    let Some(obj) = so.as_object() else {
        return Err(bad("`structured_outputs` must be an object.", "structured_outputs"));
    };
    let kinds: Vec<(&String, &Value)> = obj.iter().filter(|(_, v)| !v.is_null() && **v != Value::Bool(false)).collect();
    let [(key, value)] = kinds.as_slice() else {
        let message = "`structured_outputs` takes exactly one of `json`, `regex`, `choice`, `grammar`, `json_object`.";
        return Err(bad(message, "structured_outputs"));
    };
    let param = format!("structured_outputs.{key}");
    let text = |v: &Value| v.as_str().map(str::to_string).ok_or_else(|| bad("must be a string.", &param));
    let grammar = match key.as_str() {
        "json" => match value {
            // A schema, or a schema as JSON text.
            Value::String(s) => Grammar::JsonSchema(s.clone()),
            Value::Object(_) | Value::Bool(true) => Grammar::JsonSchema(value.to_string()),
            _ => return Err(bad("must be a JSON schema.", &param)),
        },
        "json_object" if **value == Value::Bool(true) => Grammar::JsonObject,
        "regex" => Grammar::Regex(text(value)?),
        "grammar" => Grammar::Lark(text(value)?),
        "choice" => {
            let options: Option<Vec<String>> =
                value.as_array().map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect());
            match options {
                Some(o) if !o.is_empty() && o.len() == value.as_array().map_or(0, Vec::len) => Grammar::Choice(o),
                _ => return Err(bad("must be a non-empty list of strings.", &param)),
            }
        }
        other => return Err(bad(format!("`{other}` is not a kind of structured output here."), &param)),
    };
    Ok((grammar, param))
}
