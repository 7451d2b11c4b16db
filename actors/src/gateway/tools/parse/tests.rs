//! Unit tests of `parse`: real outputs of each family, well-formed and malformed.

use super::*;

/// (name, arguments as a JSON value) of each call, and the content.
fn read(p: &Parsed) -> (Option<&str>, Vec<(String, Value)>) {
    let calls = p.calls.iter().map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap())).collect();
    (p.content.as_deref(), calls)
}

#[test]
fn hermes_and_qwen_outputs() {
    use serde_json::json;
    type Case<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, Value)>);
    let table: &[Case] = &[
        // Qwen2.5 as it writes one call.
        (
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>",
            None,
            vec![("get_weather", json!({"city": "Paris", "unit": "celsius"}))],
        ),
        // Two calls, with text before them.
        (
            "Let me check both.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": 1}}\n</tool_call>",
            Some("Let me check both."),
            vec![("a", json!({})), ("b", json!({"x": 1}))],
        ),
        // Arguments as JSON text (some fine-tunes), and an unclosed last call.
        ("<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"q\\\": 2}\"}", None, vec![("f", json!({"q": 2}))]),
    ];
    for (text, content, calls) in table {
        let p = output(ToolParser::Hermes, text);
        let want: Vec<(String, Value)> = calls.iter().map(|(n, a)| (n.to_string(), a.clone())).collect();
        assert_eq!(read(&p), (*content, want), "{text:?}");
        assert!(p.calls.iter().all(|c| c.id.starts_with("call_") && c.id.len() == 29));
    }
    // Malformed: back whole as content.
    for text in [
        "No tools needed: the answer is 4.",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": }\n</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": [1, 2]}</tool_call>",
        "<tool_call>not json</tool_call> and more",
    ] {
        let p = output(ToolParser::Hermes, text);
        assert_eq!((p.content.as_deref(), p.calls.len()), (Some(text), 0), "{text:?}");
    }
}

#[test]
fn llama3_outputs() {
    use serde_json::json;
    let p = output(ToolParser::Llama3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}");
    assert_eq!(read(&p), (None, vec![("get_weather".into(), json!({"city": "Oslo"}))]));
    let p = output(
        ToolParser::Llama3,
        "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"n\": 3}}",
    );
    assert_eq!(read(&p), (None, vec![("a".into(), json!({})), ("b".into(), json!({"n": 3}))]));
    for text in [
        "The weather in Oslo is cold.",
        "{\"name\": \"a\", \"parameters\": {}} trailing words",
        "{\"name\": \"a\", \"parameters\": {",
        "{\"city\": \"Oslo\"}",
    ] {
        let p = output(ToolParser::Llama3, text);
        assert_eq!((p.content.as_deref(), p.calls.len()), (Some(text), 0), "{text:?}");
    }
}

#[test]
fn mistral_outputs() {
    use serde_json::json;
    let p = output(ToolParser::Mistral, "[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}]");
    assert_eq!(read(&p), (None, vec![("add".into(), json!({"a": 1, "b": 2}))]));
    let p = output(
        ToolParser::Mistral,
        "Sure.[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {}}]",
    );
    assert_eq!(read(&p).0, Some("Sure."));
    assert_eq!(p.calls.len(), 2);
    for text in [
        "Just text.",
        "[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 1,}]",
        "[TOOL_CALLS] []",
        "[TOOL_CALLS] {\"name\": \"x\"}",
    ] {
        let p = output(ToolParser::Mistral, text);
        assert_eq!((p.content.as_deref(), p.calls.len()), (Some(text), 0), "{text:?}");
    }
}

#[test]
fn a_constrained_list_of_calls() {
    let p = constrained(r#"[{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]"#);
    assert_eq!(p.calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["f", "g"]);
    assert_eq!(p.calls[0].arguments, r#"{"x":1}"#);
    assert_eq!(constrained("[1, 2").calls.len(), 0, "no call: content");
    let cut = constrained(r#"[{"name": "f", "arguments": {}}, {"name": "f", "argu"#);
    assert_eq!(cut.calls.len(), 1, "cut short by max_tokens: the calls it completed");
}

#[test]
fn content_streams_up_to_where_a_call_may_start() {
    assert_eq!(streamable(ToolParser::Hermes, "Hello there"), 11);
    assert_eq!(streamable(ToolParser::Hermes, "Hello <tool"), 6, "a possible tag is held back");
    assert_eq!(streamable(ToolParser::Hermes, "Hi <tool_call>{\"name\""), 3);
    assert_eq!(streamable(ToolParser::Hermes, "Hi <b>"), 6);
    assert_eq!(streamable(ToolParser::Mistral, "Sure [TOOL"), 5);
    assert_eq!(streamable(ToolParser::Llama3, "  {\"name\""), 0);
    assert_eq!(streamable(ToolParser::Llama3, "<|python"), 0);
    assert_eq!(streamable(ToolParser::Llama3, "It is sunny."), 12);
    assert_eq!(streamable(ToolParser::Hermes, "é<"), 2, "on a character boundary");
}
