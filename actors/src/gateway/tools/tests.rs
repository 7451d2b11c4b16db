//! Unit tests of `tools`: checks that name the path, the constraint for `required` and named
//! calls, and the prompt of a template that knows no tools.

use serde_json::json;

use super::*;
use crate::gateway::openai::tests_model;

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
    ])
}

#[test]
fn choices_and_bad_definitions() {
    let m = tests_model();
    let t = tools();
    let read = |tc: Option<Value>, par: Option<Value>| super::read(Some(&t), tc.as_ref(), par.as_ref(), &m);
    assert_eq!(read(None, None).unwrap().unwrap().choice, ToolChoice::Auto);
    assert!(read(Some(json!("none")), None).unwrap().is_none(), "none: no tools at all");
    assert_eq!(read(Some(json!("required")), None).unwrap().unwrap().choice, ToolChoice::Required);
    let named =
        read(Some(json!({"type": "function", "function": {"name": "add"}})), Some(json!(false))).unwrap().unwrap();
    assert_eq!((named.choice, named.parallel), (ToolChoice::Named("add".into()), false));
    for (tc, param) in [
        (json!("sometimes"), "tool_choice"),
        (json!({"type": "function", "function": {"name": "nope"}}), "tool_choice.function.name"),
        (json!({"type": "function"}), "tool_choice"),
    ] {
        assert_eq!(read(Some(tc), None).unwrap_err().param.as_deref(), Some(param));
    }
    assert_eq!(read(None, Some(json!("yes"))).unwrap_err().param.as_deref(), Some("parallel_tool_calls"));
    for (defs, param) in [
        (json!([{"type": "retrieval"}]), "tools[0].type"),
        (json!([{"type": "function"}]), "tools[0].function"),
        (json!([{"type": "function", "function": {"name": "has space"}}]), "tools[0].function.name"),
        (
            json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
            "tools[1].function.name",
        ),
        (
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "no-such"}}}]),
            "tools[0].function.parameters",
        ),
        (json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]), "tools[0].function.parameters"),
        (json!({"a": 1}), "tools"),
    ] {
        let e = super::read(Some(&defs), None, None, &m).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{defs}: {}", e.message);
    }
    // Without tools, the fields that need them are refused.
    assert_eq!(super::read(None, Some(&json!("auto")), None, &m).unwrap_err().param.as_deref(), Some("tool_choice"));
    assert!(super::read(Some(&json!([])), None, None, &m).unwrap().is_none());
}

#[test]
fn required_and_named_calls_are_constrained_to_the_tools_schemas() {
    let m = tests_model();
    let t = tools();
    let req = super::read(Some(&t), Some(&json!("required")), None, &m).unwrap().unwrap();
    let Some(Constraint { grammar: Grammar::JsonSchema(schema), .. }) = req.constraint() else { panic!() };
    let schema: Value = serde_json::from_str(&schema).unwrap();
    assert_eq!(schema["minItems"], 1);
    assert!(schema.get("maxItems").is_none(), "parallel by default");
    assert_eq!(schema["items"]["anyOf"].as_array().unwrap().len(), 2);
    assert_eq!(schema["items"]["anyOf"][1]["properties"]["arguments"]["required"], json!(["a", "b"]));
    assert!(m.grammars.check(&req.constraint().unwrap()).is_ok());
    let named = super::read(Some(&t), Some(&json!({"type": "function", "function": {"name": "add"}})), None, &m)
        .unwrap()
        .unwrap();
    let Some(Constraint { grammar: Grammar::JsonSchema(schema), .. }) = named.constraint() else { panic!() };
    let schema: Value = serde_json::from_str(&schema).unwrap();
    assert_eq!((schema["maxItems"].clone(), schema["items"]["anyOf"].as_array().unwrap().len()), (json!(1), 1));
    assert_eq!(schema["items"]["anyOf"][0]["properties"]["name"]["const"], "add");
    let auto = super::read(Some(&t), None, None, &m).unwrap().unwrap();
    assert!(auto.constraint().is_none());
}

#[test]
fn a_template_without_tools_gets_the_preamble_and_the_conversation_in_hermes_form() {
    let m = tests_model();
    assert!(!m.chat.knows_tools());
    let t = tools();
    let tools = super::read(Some(&t), None, None, &m).unwrap().unwrap();
    let call = json!({"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}});
    let messages = vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Add 1 and 2."),
        ChatMessage { role: "assistant".into(), content: String::new(), tool_calls: vec![call], tool_call_id: None },
        ChatMessage {
            role: "tool".into(),
            content: "3".into(),
            tool_calls: vec![],
            tool_call_id: Some("call_1".into()),
        },
    ];
    let prompt = render(&m, &messages, Some(&tools)).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\nBe brief.\n\nYou can call functions."), "{prompt}");
    assert!(prompt.contains("\"name\":\"get_weather\""), "{prompt}");
    assert!(prompt.contains("<|im_start|>assistant\n<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":1,\"b\":2}}\n</tool_call><|im_end|>"), "{prompt}");
    assert!(prompt.contains("<|im_start|>tool\n<tool_response>\n3\n</tool_response><|im_end|>"), "{prompt}");
    assert!(prompt.ends_with("<|im_start|>assistant\n"));
    // A template that takes `tools` renders them itself.
    let mut own = tests_model();
    let src = "{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}";
    own.chat = std::sync::Arc::new(gpu::chat::ChatTemplate::new(src, "", "").unwrap());
    assert_eq!(
        render(&own, &messages[..2], Some(&tools)).unwrap(),
        "[get_weather][add]system:Be brief.;user:Add 1 and 2.;"
    );
}
