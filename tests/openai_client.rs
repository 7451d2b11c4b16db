//! `armature serve` (the embedded default topology, serving SmolLM2) against the official `openai`
//! Python client.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn openai_python_client_end_to_end() {
    let py = python_venv();
    let port = free_port();
    let dir = temp_dir("openai");
    let _serve = Proc::spawn(&["serve", "--http-port", &port.to_string()], dir.join("serve.log"));
    assert!(wait_health(port, 200, Duration::from_secs(30)), "serve did not become healthy");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_e2e.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/v1"))
        .arg("SmolLM2-135M-Instruct")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python checks failed:\n{stdout}\n{stderr}");
    let summary = json(stdout.lines().last().unwrap_or(""));
    let passed: Vec<&str> = summary["passed"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
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
            "n-choices",
            "responses",
            "unknown-model",
            "malformed-json",
            "request-id"
        ]
    );
}
