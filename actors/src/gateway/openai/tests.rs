//! Unit tests of `openai`.

use axum::http::StatusCode;
use gpu::executor::TestTokenizer;
use gpu::model::ModelFrontend;
use gpu::tokenizer::Tokenizer;

use super::*;

fn model() -> ModelFrontend {
    tests_model()
}

fn ok(endpoint: Endpoint, body: &str) -> ParsedRequest {
    parse(endpoint, body.as_bytes(), &model()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
}

fn bad(endpoint: Endpoint, body: &str) -> ApiError {
    parse(endpoint, body.as_bytes(), &model()).expect_err(body)
}

#[test]
fn chat_renders_the_template_and_maps_parameters() {
    let p = ok(
        Endpoint::Chat,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_completion_tokens":5,"temperature":0.5,"top_p":0.9,"seed":7,"stop":"x","stream":true,"stream_options":{"include_usage":true},"user":"ignored"}"#,
    );
    let expected = TestTokenizer::default().encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(p.prompt_tokens, expected);
    assert_eq!(
        (p.sampling.max_tokens, p.sampling.temperature, p.sampling.top_p, p.sampling.seed, p.sampling.stop.clone()),
        (5, 0.5, 0.9, 7, vec!["x".to_string()])
    );
    assert!(p.stream && p.include_usage);
}

#[test]
fn completion_defaults_follow_openai() {
    let p = ok(Endpoint::Completion, r#"{"model":"m","prompt":"abc"}"#);
    assert_eq!(p.prompt_tokens, vec![97, 98, 99]);
    assert_eq!((p.sampling.max_tokens, p.sampling.temperature, p.sampling.top_p), (16, 1.0, 1.0));
    assert!(!p.stream && !p.include_usage);
    // Token prompts pass through; a one-element batch is one prompt.
    assert_eq!(ok(Endpoint::Completion, r#"{"model":"m","prompt":[5,6]}"#).prompt_tokens, vec![5, 6]);
    assert_eq!(ok(Endpoint::Completion, r#"{"model":"m","prompt":["ab"]}"#).prompt_tokens, vec![97, 98]);
    // Without an explicit max, the completion is clipped to the context.
    let long = format!(r#"{{"model":"m","prompt":"{}"}}"#, "a".repeat(60));
    assert_eq!(ok(Endpoint::Completion, &long).sampling.max_tokens, 4);
}

#[test]
fn bad_requests_name_the_parameter() {
    let cases: [(Endpoint, &str, StatusCode, Option<&str>); 14] = [
        (Endpoint::Chat, "{not json", StatusCode::BAD_REQUEST, None),
        (Endpoint::Chat, r#"{"model":"m"}"#, StatusCode::BAD_REQUEST, Some("messages")),
        (Endpoint::Chat, r#"{"model":"other","messages":[]}"#, StatusCode::NOT_FOUND, Some("model")),
        (Endpoint::Chat, r#"{"model":"m","messages":[]}"#, StatusCode::BAD_REQUEST, Some("messages")),
        (
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
            StatusCode::BAD_REQUEST,
            Some("messages[0].role"),
        ),
        (
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":17}"#,
            StatusCode::BAD_REQUEST,
            Some("n"),
        ),
        (
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
            StatusCode::BAD_REQUEST,
            Some("temperature"),
        ),
        (
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":0}"#,
            StatusCode::BAD_REQUEST,
            Some("top_p"),
        ),
        (
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"many"}"#,
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
            StatusCode::BAD_REQUEST,
            Some("stop"),
        ),
        (
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
            StatusCode::BAD_REQUEST,
            Some("tools[0].function"),
        ),
        (Endpoint::Completion, r#"{"model":"m","prompt":["a","b"]}"#, StatusCode::BAD_REQUEST, Some("prompt")),
        (
            Endpoint::Completion,
            r#"{"model":"m","prompt":"x","max_tokens":64}"#,
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
    ];
    for (endpoint, body, status, param) in cases {
        let e = bad(endpoint, body);
        assert_eq!((e.status, e.param.as_deref()), (status, param), "{body}: {}", e.message);
    }
    let e = bad(Endpoint::Completion, &format!(r#"{{"model":"m","prompt":"{}"}}"#, "a".repeat(64)));
    assert_eq!(e.code, Some("context_length_exceeded"));
    assert!(bad(Endpoint::Chat, "{not json").message.starts_with("Malformed JSON body"));
}

#[test]
fn error_body_has_openai_shape() {
    let body = ApiError::bad_request("nope", Some("n")).body();
    assert_eq!(
        body,
        serde_json::json!({ "error": { "message": "nope", "type": "invalid_request_error", "param": "n", "code": null } })
    );
}

#[test]
fn response_bodies() {
    let meta = ResponseMeta { id: "chatcmpl-1".into(), created: 5, model: "m".into(), endpoint: Endpoint::Chat };
    let usage = Usage { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 0 };
    let full = meta.full(
        &[ChoiceOut {
            text: "hi".into(),
            reason: FinishReason::Length,
            logprobs: None,
            tool_calls: vec![],
            reasoning: None,
        }],
        usage,
    );
    assert_eq!(full["choices"][0]["message"]["content"], "hi");
    assert_eq!(full["choices"][0]["finish_reason"], "length");
    assert_eq!(full["usage"]["total_tokens"], 5);
    assert_eq!(meta.chunk(0, None, None, false, None)["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(meta.chunk(0, Some("x"), None, true, None)["usage"], Value::Null);
    assert_eq!(meta.usage_chunk(usage)["choices"], serde_json::json!([]));
    let text = ResponseMeta { endpoint: Endpoint::Completion, ..meta };
    assert_eq!(text.chunk(0, Some("x"), None, false, None)["object"], "text_completion");
}

#[test]
fn a_prompt_that_cannot_fit_is_refused_before_tokenizing() {
    let m = model();
    let at_most = m.context_length as usize * m.longest_token;
    let long = "a".repeat(at_most);
    let e = bad(Endpoint::Completion, &format!(r#"{{"model":"m","prompt":"{long}"}}"#));
    assert_eq!(
        (e.status, e.code, e.param.as_deref()),
        (StatusCode::BAD_REQUEST, Some("context_length_exceeded"), Some("prompt"))
    );
    assert!(e.message.contains("refused before tokenizing"), "{}", e.message);
    let e = bad(Endpoint::Chat, &format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{long}"}}]}}"#));
    assert_eq!(e.param.as_deref(), Some("messages"));
    // Under the bound it is tokenized, and the exact count decides.
    let e = bad(Endpoint::Completion, &format!(r#"{{"model":"m","prompt":"{}"}}"#, "a".repeat(100)));
    assert!(e.message.contains("the prompt has 100 tokens"), "{}", e.message);
}

#[test]
fn penalties_min_p_and_logit_bias_are_honoured_and_checked() {
    let p = ok(
        Endpoint::Completion,
        r#"{"model":"m","prompt":"x","presence_penalty":0.5,"frequency_penalty":-1,"repetition_penalty":1.3,
            "min_p":0.05,"logit_bias":{"65":-100,"66":2.5}}"#,
    );
    let s = &p.sampling;
    assert_eq!((s.presence_penalty, s.frequency_penalty, s.repetition_penalty, s.min_p), (0.5, -1.0, 1.3, 0.05));
    assert_eq!(s.logit_bias, vec![(65, -100.0), (66, 2.5)]);
    assert!(s.adjusts_logits());
    // Left out, nothing adjusts.
    let plain = ok(Endpoint::Completion, r#"{"model":"m","prompt":"x"}"#);
    assert!(!plain.sampling.adjusts_logits());
    assert_eq!(plain.sampling.repetition_penalty, 1.0);
    // Out of range, wrong types, unknown ids: 400 naming the field.
    for (body, param) in [
        (r#""presence_penalty":2.5"#, "presence_penalty"),
        (r#""frequency_penalty":-3"#, "frequency_penalty"),
        (r#""presence_penalty":"1.5""#, "presence_penalty"),
        (r#""repetition_penalty":0"#, "repetition_penalty"),
        (r#""min_p":1.5"#, "min_p"),
        (r#""logit_bias":{"65":101}"#, "logit_bias.65"),
        (r#""logit_bias":{"not-an-id":1}"#, "logit_bias.not-an-id"),
        (r#""logit_bias":{"999999":1}"#, "logit_bias.999999"),
        (r#""logit_bias":{"65":"up"}"#, "logit_bias.65"),
    ] {
        let e = bad(Endpoint::Completion, &format!(r#"{{"model":"m","prompt":"x",{body}}}"#));
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{body}: {}", e.message);
    }
}

#[test]
fn log_probabilities_are_asked_per_endpoint_shape() {
    let chat = |extra: &str| format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
    assert_eq!(ok(Endpoint::Chat, &chat("")).sampling.logprobs, None);
    assert_eq!(ok(Endpoint::Chat, &chat(r#","logprobs":true"#)).sampling.logprobs, Some(0));
    assert_eq!(ok(Endpoint::Chat, &chat(r#","logprobs":true,"top_logprobs":5"#)).sampling.logprobs, Some(5));
    assert_eq!(ok(Endpoint::Chat, &chat(r#","logprobs":false"#)).sampling.logprobs, None);
    for (extra, param) in [
        (r#","top_logprobs":3"#, "top_logprobs"),
        (r#","logprobs":true,"top_logprobs":21"#, "top_logprobs"),
        (r#","logprobs":3"#, "logprobs"),
    ] {
        assert_eq!(bad(Endpoint::Chat, &chat(extra)).param.as_deref(), Some(param), "{extra}");
    }
    let completion = |extra: &str| format!(r#"{{"model":"m","prompt":"hi"{extra}}}"#);
    assert_eq!(ok(Endpoint::Completion, &completion(r#","logprobs":2"#)).sampling.logprobs, Some(2));
    assert_eq!(ok(Endpoint::Completion, &completion(r#","logprobs":0"#)).sampling.logprobs, Some(0));
    for (extra, param) in [
        (r#","logprobs":true"#, "logprobs"),
        (r#","logprobs":21"#, "logprobs"),
        (r#","top_logprobs":2"#, "top_logprobs"),
        (r#","echo":"yes""#, "echo"),
        (r#","max_tokens":0"#, "max_tokens"),
    ] {
        assert_eq!(bad(Endpoint::Completion, &completion(extra)).param.as_deref(), Some(param), "{extra}");
    }
    // `echo` returns the prompt, scored when log probabilities are asked for, even with nothing
    // to generate; chat has no `echo`.
    let echoed = ok(Endpoint::Completion, &completion(r#","echo":true,"logprobs":3,"max_tokens":0"#));
    assert_eq!(
        (echoed.echo.as_deref(), echoed.sampling.prompt_logprobs, echoed.sampling.max_tokens),
        (Some("hi"), Some(3), 0)
    );
    let echoed = ok(Endpoint::Completion, &completion(r#","echo":true"#));
    assert_eq!((echoed.echo.as_deref(), echoed.sampling.prompt_logprobs), (Some("hi"), None));
    let ids = ok(Endpoint::Completion, r#"{"model":"m","prompt":[104,105],"echo":true}"#);
    assert_eq!(ids.echo.as_deref(), Some("hi"), "a prompt of token ids echoes as their text");
    let plain = ok(Endpoint::Completion, &completion(r#","echo":false,"logprobs":1"#));
    assert_eq!((plain.echo, plain.sampling.prompt_logprobs), (None, None));
    assert_eq!(bad(Endpoint::Chat, &chat(r#","echo":true"#)).param.as_deref(), Some("echo"));
}

#[test]
fn dependent_fields_and_wrong_types_are_refused_by_name() {
    let chat = |extra: &str| format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
    for (extra, param) in [
        (r#","tool_choice":"auto""#, "tool_choice"),
        (r#","stream_options":{"include_usage":true}"#, "stream_options"),
        (r#","stream":false,"stream_options":{"include_usage":true}"#, "stream_options"),
        (r#","user":5"#, "user"),
        (r#","temperature":"hot""#, "temperature"),
        (r#","seed":"x""#, "seed"),
        (r#","n":0"#, "n"),
        (r#","max_tokens":-1"#, "max_tokens"),
    ] {
        let e = bad(Endpoint::Chat, &chat(extra));
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{extra}: {}", e.message);
    }
    // Fields outside OpenAI's spec are accepted and ignored.
    ok(
        Endpoint::Chat,
        &chat(r#","some_vendor_extension":{"a":1},"user":"u-1","stream":true,"stream_options":{"include_usage":true}"#),
    );
    let e = bad(Endpoint::Completion, r#"{"model":"m","prompt":"x","best_of":3}"#);
    assert_eq!(e.param.as_deref(), Some("best_of"));
    assert_eq!(ok(Endpoint::Completion, r#"{"model":"m","prompt":"x","n":2,"best_of":2}"#).n, 2);
}

#[test]
fn the_models_sampling_defaults_fill_what_a_request_leaves_out() {
    let mut m = model();
    m.sampling = runtime::config::SamplingDefaults {
        temperature: Some(0.3),
        top_p: Some(0.8),
        top_k: Some(40),
        min_p: Some(0.05),
        repetition_penalty: Some(1.1),
    };
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let s = parse(Endpoint::Chat, body.as_bytes(), &m).unwrap().sampling;
    assert_eq!((s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty), (0.3, 0.8, 40, 0.05, 1.1));
    let explicit = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1,"top_p":1,"top_k":-1,"min_p":0,"repetition_penalty":1}"#;
    let s = parse(Endpoint::Chat, explicit.as_bytes(), &m).unwrap().sampling;
    assert_eq!((s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty), (1.0, 1.0, 0, 0.0, 1.0));
}

/// What this server does with each field of OpenAI's chat completion request.
#[derive(Debug, PartialEq)]
enum Disposition {
    Honoured,
    /// Accepted and ignored (documented): it changes nothing a client can observe here.
    Ignored,
    Refused,
}

#[test]
fn every_openai_chat_field_is_honoured_ignored_as_documented_or_refused_by_name() {
    use Disposition::*;
    let table: &[(&str, &str, Disposition)] = &[
        ("frequency_penalty", "0.5", Honoured),
        ("logit_bias", r#"{"65": 1}"#, Honoured),
        ("logprobs", "true", Honoured),
        ("max_completion_tokens", "5", Honoured),
        ("max_tokens", "5", Honoured),
        ("n", "2", Honoured),
        ("presence_penalty", "0.5", Honoured),
        ("seed", "1", Honoured),
        ("stop", r#"["x"]"#, Honoured),
        ("stream", "true", Honoured),
        ("temperature", "0.5", Honoured),
        ("top_p", "0.5", Honoured),
        ("response_format", r#"{"type": "text"}"#, Ignored),
        ("metadata", r#"{"k": "v"}"#, Ignored),
        ("service_tier", r#""auto""#, Ignored),
        ("user", r#""u-1""#, Ignored),
        ("prompt_cache_key", r#""k""#, Ignored),
        ("safety_identifier", r#""s""#, Ignored),
        ("store", "false", Ignored),
        ("modalities", r#"["text"]"#, Ignored),
        ("audio", r#"{"voice": "alloy", "format": "wav"}"#, Refused),
        ("modalities", r#"["text", "audio"]"#, Refused),
        ("prediction", r#"{"type": "content", "content": "x"}"#, Refused),
        ("web_search_options", "{}", Refused),
        ("reasoning_effort", r#""low""#, Refused),
        ("store", "true", Refused),
        ("parallel_tool_calls", "true", Refused),
        ("tool_choice", r#""none""#, Refused),
        ("tools", r#"[{"type": "function", "function": {"name": "f"}}]"#, Honoured),
        ("tools", r#"[{"type": "function", "function": {"name": "bad name"}}]"#, Refused),
        ("functions", r#"[{"name": "f"}]"#, Refused),
        ("function_call", r#""auto""#, Refused),
        ("response_format", r#"{"type": "json_object"}"#, Honoured),
        (
            "response_format",
            r#"{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}"#,
            Honoured,
        ),
        ("response_format", r#"{"type": "xml"}"#, Refused),
        ("top_logprobs", "2", Refused),
        ("stream_options", r#"{"include_usage": true}"#, Refused),
    ];
    check_fields(Endpoint::Chat, r#""messages":[{"role":"user","content":"hi"}]"#, table);
}

/// Each field of `table` sent alone beside `base`: an honoured one changes the parsed request, an
/// ignored one does not, a refused one is a 400 naming it.
fn check_fields(endpoint: Endpoint, base: &str, table: &[(&str, &str, Disposition)]) {
    // The seed is drawn when the request has none: the same one everywhere, for comparing.
    // Room for a tools preamble.
    let roomy = ModelFrontend { context_length: 4096, ..model() };
    let parsed = |body: String, field: &str| {
        parse(endpoint, body.as_bytes(), &roomy).map(|mut p| {
            if field != "seed" {
                p.sampling.seed = 0;
            }
            format!("{p:?}")
        })
    };
    let plain = parsed(format!(r#"{{"model":"m",{base}}}"#), "").unwrap();
    for (field, value, disposition) in table {
        let body = format!(r#"{{"model":"m",{base},"{field}":{value}}}"#);
        match (disposition, parsed(body.clone(), field)) {
            (Disposition::Honoured, Ok(p)) => assert_ne!(p, plain, "{field} = {value} changed nothing"),
            (Disposition::Ignored, Ok(p)) => assert_eq!(p, plain, "{field} = {value} is documented as ignored"),
            (Disposition::Refused, Err(e)) => {
                let named = e.param.as_deref().is_some_and(|p| {
                    p == *field || p.starts_with(&format!("{field}.")) || p.starts_with(&format!("{field}["))
                });
                assert!(named, "{field} = {value}: {:?} {}", e.param, e.message)
            }
            (d, got) => panic!("{field} = {value}: {d:?} expected, got {got:?}"),
        }
    }
}

#[test]
fn every_openai_completion_field_is_honoured_ignored_as_documented_or_refused_by_name() {
    use Disposition::*;
    let table: &[(&str, &str, Disposition)] = &[
        ("best_of", "1", Ignored),
        ("echo", "true", Honoured),
        ("echo", "false", Ignored),
        ("frequency_penalty", "0.5", Honoured),
        ("logit_bias", r#"{"65": 1}"#, Honoured),
        ("logprobs", "2", Honoured),
        ("max_tokens", "5", Honoured),
        ("n", "2", Honoured),
        ("presence_penalty", "0.5", Honoured),
        ("seed", "1", Honoured),
        ("stop", r#"["x"]"#, Honoured),
        ("stream", "true", Honoured),
        ("temperature", "0.5", Honoured),
        ("top_p", "0.5", Honoured),
        ("user", r#""u-1""#, Ignored),
        // vLLM's extensions.
        ("top_k", "5", Honoured),
        ("min_p", "0.1", Honoured),
        ("repetition_penalty", "1.2", Honoured),
        ("ignore_eos", "true", Honoured),
        ("structured_outputs", r#"{"regex": "[0-9]+"}"#, Honoured),
        ("structured_outputs", r#"{"choice": ["a", "b"]}"#, Honoured),
        ("best_of", "3", Refused),
        ("suffix", r#""x""#, Refused),
        ("stream_options", r#"{"include_usage": true}"#, Refused),
        ("top_logprobs", "2", Refused),
        ("logprobs", "21", Refused),
        ("max_tokens", "0", Refused),
        ("user", "5", Refused),
    ];
    check_fields(Endpoint::Completion, r#""prompt":"hi""#, table);
    let batched = bad(Endpoint::Completion, r#"{"model":"m","prompt":["a","b"]}"#);
    assert_eq!(batched.param.as_deref(), Some("prompt"), "{}", batched.message);
}

#[test]
fn structured_outputs_become_constraints_and_bad_ones_name_their_field() {
    use runtime::request::Grammar;
    let chat = |extra: &str| format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],{extra}}}"#);
    let grammar = |extra: &str| ok(Endpoint::Chat, &chat(extra)).sampling.constraint.map(|c| c.grammar);
    assert_eq!(grammar(r#""response_format":{"type":"text"}"#), None);
    assert_eq!(grammar(r#""response_format":{"type":"json_object"}"#), Some(Grammar::JsonObject));
    let schema = r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#;
    let got = grammar(&format!(
        r#""response_format":{{"type":"json_schema","json_schema":{{"name":"t","schema":{schema},"strict":true}}}}"#
    ));
    let Some(Grammar::JsonSchema(text)) = got else { panic!("{got:?}") };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        serde_json::from_str::<serde_json::Value>(schema).unwrap()
    );
    assert_eq!(grammar(r#""structured_outputs":{"regex":"[ab]+"}"#), Some(Grammar::Regex("[ab]+".into())));
    assert_eq!(
        grammar(r#""structured_outputs":{"choice":["x","y"]}"#),
        Some(Grammar::Choice(vec!["x".into(), "y".into()]))
    );
    assert_eq!(
        grammar(r#""structured_outputs":{"grammar":"start: \"a\""}"#),
        Some(Grammar::Lark("start: \"a\"".into()))
    );
    assert_eq!(
        grammar(r#""structured_outputs":{"json":{"type":"integer"}}"#),
        Some(Grammar::JsonSchema(r#"{"type":"integer"}"#.into()))
    );
    for (extra, param) in [
        (
            r#""response_format":{"type":"json_schema","json_schema":{"name":"t","schema":{"type":"no-such"}}}"#,
            "response_format.json_schema.schema",
        ),
        (
            r#""response_format":{"type":"json_schema","json_schema":{"name":"t","schema":[1]}}"#,
            "response_format.json_schema.schema",
        ),
        (r#""response_format":{"type":"json_schema"}"#, "response_format.json_schema"),
        (r#""response_format":{"type":"yaml"}"#, "response_format.type"),
        (r#""structured_outputs":{"regex":"("}"#, "structured_outputs.regex"),
        (r#""structured_outputs":{"choice":[]}"#, "structured_outputs.choice"),
        (r#""structured_outputs":{"grammar":"start: nowhere"}"#, "structured_outputs.grammar"),
        (r#""structured_outputs":{"regex":"a","choice":["b"]}"#, "structured_outputs"),
        (r#""structured_outputs":{"regex":"a"},"response_format":{"type":"json_object"}"#, "structured_outputs"),
    ] {
        let e = bad(Endpoint::Chat, &chat(extra));
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{extra}: {}", e.message);
    }
}
