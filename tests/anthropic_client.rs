//! Anthropic's Messages API against `armature serve` (the test executor) with the official
//! `anthropic` Python client: plain and streamed messages with Anthropic's events, `max_tokens`
//! and stop sequences as stop reasons, `count_tokens`, and errors in Anthropic's shape.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn anthropic_python_client_end_to_end() {
    let (_serve, port) = serve_test_executor("anthropic-client", "0ms");
    assert!(wait_health(port, 200, Duration::from_secs(60)), "not healthy");
    let out = std::process::Command::new(python_venv())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/anthropic_e2e.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("armature-test")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python checks failed:\n{stdout}\n{stderr}");
    let summary = json(stdout.lines().last().unwrap_or(""));
    let passed: Vec<&str> = summary["passed"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(passed, ["create", "max-tokens", "stream", "stop-sequence", "count-tokens", "errors"]);
}
