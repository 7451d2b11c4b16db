//! Anthropic's Messages API against `armature serve` (the test executor) with the official
//! `anthropic` Python client: plain and streamed messages with Anthropic's events, `max_tokens`
//! and stop sequences as stop reasons, `count_tokens`, errors in Anthropic's shape, and tools
//! (`any` and a named tool constrained to their schemas, streamed as input JSON deltas, a
//! `tool_result` turn).

mod support;

use std::time::Duration;

use support::*;

#[test]
fn anthropic_python_client_end_to_end() {
    let (_serve, port) = serve_test_executor("anthropic-client", "0ms");
    assert!(wait_health(port, 200, Duration::from_secs(60)), "not healthy");
    let url = format!("http://127.0.0.1:{port}");
    let passed = python_checks("anthropic_e2e.py", &[&url, "armature-test"]);
    assert_eq!(passed, ["create", "max-tokens", "stream", "stop-sequence", "count-tokens", "errors", "tools"]);
}
