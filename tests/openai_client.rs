//! `armature serve` (the embedded default topology, serving SmolLM2) against the official `openai`
//! Python client, and the README's first request, sent as the README writes it.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn openai_python_client_end_to_end() {
    let port = free_port();
    let dir = temp_dir("openai");
    let _serve = Proc::spawn(&["serve", "--http-port", &port.to_string()], dir.join("serve.log"));
    assert!(wait_health(port, 200, Duration::from_secs(30)), "serve did not become healthy");
    readme_first_request_is_answered(port);
    let url = format!("http://127.0.0.1:{port}/v1");
    let passed = python_checks("openai_e2e.py", &[&url, "SmolLM2-135M-Instruct"]);
    assert_eq!(
        passed,
        [
            "models",
            "chat",
            "chat-stream-matches",
            "stream-without-usage",
            "completion",
            "stop-sequence",
            "max-completion-tokens",
            "models-retrieve",
            "penalties",
            "logprobs",
            "echo",
            "structured-outputs",
            "tools",
            "n-choices",
            "responses",
            "responses-tools-and-formats",
            "unknown-model",
            "malformed-json",
            "request-id"
        ]
    );
    // The served default runs the fast CPU mode: within 0.5 of the f32 numpy forward pass.
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/smollm2.json");
    let passed = python_checks("logprobs_numpy.py", &[&url, "SmolLM2-135M-Instruct", reference, "0.5"]);
    assert_eq!(passed, ["generated-logprobs", "prompt-scores"]);
}

/// The body of the README's first `curl` (between `-d '` and the closing `'`).
fn readme_first_request() -> String {
    let readme = include_str!("../README.md");
    let curl = readme.find("curl -s http://127.0.0.1:8000/v1/chat/completions").expect("the README's first curl");
    let body = &readme[curl..];
    let start = body.find("-d '").expect("its body") + 4;
    let end = start + body[start..].find('\'').expect("its end");
    body[start..end].to_string()
}

/// Sent ten times with the embedded defaults (it gives no temperature), at least nine answers
/// name Paris. The threshold is the assertion: the model samples.
fn readme_first_request_is_answered(port: u16) {
    let body = readme_first_request();
    assert!(!body.contains("temperature"), "the README's request relies on the defaults: {body}");
    let mut right = 0;
    let mut answers = Vec::new();
    for _ in 0..10 {
        let (status, _, text) = http("POST", port, "/v1/chat/completions", Some(&body));
        assert_eq!(status, 200, "{text}");
        let answer = json(&text)["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string();
        right += usize::from(answer.contains("Paris"));
        answers.push(answer);
    }
    assert!(right >= 9, "{right} of 10 named Paris: {answers:#?}");
}
