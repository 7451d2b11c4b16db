//! The access log against a real `armature serve` with JSON logs: one line per finished request,
//! under the target `armature::access`, with the API key's id (never the key), the client's
//! `x-request-id`, the tokens (cached ones too, which the response's usage reports as well), the
//! time to first token, the worker and the outcome; a client that leaves mid-stream is logged as
//! such.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

const KEY: &str = "sk-access-0123456789abcdef";

fn config(port: u16, keys: &Path) -> String {
    format!(
        r#"
[cluster]
name = "access"
cookie = "c"

[model]
source = "test"

[gateway]
api_keys_file = {keys:?}

[telemetry]
log_format = "json"

[[nodes]]
name = "n0"
control = "127.0.0.1:{control}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu" }}]
"#,
        control = free_port()
    )
}

/// The access lines of the log so far, as JSON objects.
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "armature::access")
        .collect()
}

fn post(port: u16, path: &str, body: &Value, tag: &str) -> Value {
    let auth = format!("Bearer {KEY}");
    let headers = [("Authorization", auth.as_str()), ("x-request-id", tag)];
    let (status, _, text) = http_with("POST", port, path, Some(&body.to_string()), &headers);
    assert_eq!(status, 200, "{text}");
    json(&text)
}

#[test]
fn every_finished_request_writes_one_access_line() {
    let port = free_port();
    let dir = temp_dir("access-log");
    let keys = dir.join("keys.toml");
    std::fs::write(&keys, format!("[[keys]]\nid = \"reader\"\nkey = \"{KEY}\"\n")).unwrap();
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, config(port, &keys)).unwrap();
    let serve = Proc::spawn(&["serve", "--config", config_path.to_str().unwrap()], dir.join("serve.log"));
    assert!(wait_health(port, 200, Duration::from_secs(30)), "not healthy: {}", serve.log_text());

    // Four blocks' worth of prompt, twice: the second finds three of them cached.
    let text = prompt(11, 4);
    let completion = serde_json::json!({ "model": "armature-test", "prompt": text, "max_tokens": 3, "temperature": 0 });
    let first = post(port, "/v1/completions", &completion, "trace-1");
    let second = post(port, "/v1/completions", &completion, "trace-2");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= 16 && cached < second["usage"]["prompt_tokens"].as_u64().unwrap(), "{cached}");
    let chat = serde_json::json!({
        "model": "armature-test", "messages": [{ "role": "user", "content": "Say hello" }], "max_tokens": 2
    });
    let third = post(port, "/v1/chat/completions", &chat, "trace-3");

    assert!(wait_until(Duration::from_secs(10), || access_lines(&serve.log_text()).len() >= 3), "{}", serve.log_text());
    let log = serve.log_text();
    assert!(!log.contains(KEY), "the key itself is never logged");
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 3, "one line per request: {lines:?}");
    for (line, (response, tag, path)) in lines.iter().zip([
        (&first, "trace-1", "/v1/completions"),
        (&second, "trace-2", "/v1/completions"),
        (&third, "trace-3", "/v1/chat/completions"),
    ]) {
        let id = line["request"].as_str().unwrap();
        assert!(response["id"].as_str().unwrap().ends_with(id), "{line} for {}", response["id"]);
        assert_eq!(line["tag"], tag);
        assert_eq!(line["path"], path);
        assert_eq!((&line["model"], &line["key"]), (&Value::from("armature-test"), &Value::from("reader")));
        let usage = &response["usage"];
        assert_eq!(line["prompt_tokens"], usage["prompt_tokens"]);
        assert_eq!(line["completion_tokens"], usage["completion_tokens"]);
        assert_eq!(line["cached_tokens"], usage["prompt_tokens_details"]["cached_tokens"]);
        let (ttft, duration) = (line["ttft_ms"].as_f64().unwrap(), line["duration_ms"].as_f64().unwrap());
        assert!(ttft > 0.0 && ttft <= duration, "{ttft} {duration}");
        assert_eq!((&line["worker"], &line["workers"]), (&Value::from("n0/cpu"), &Value::from("n0/cpu")));
        assert_eq!((&line["attempts"], &line["migrations"]), (&Value::from(1), &Value::from(0)));
        let reason = response["choices"][0]["finish_reason"].as_str().unwrap();
        assert_eq!(line["outcome"], if reason == "length" { "length" } else { "stop" }, "{line}");
        assert!(line.get("error").is_none() && line.get("prefill").is_none(), "{line}");
    }
    assert_eq!(lines[1]["cached_tokens"], cached);

    // A streaming client that leaves after its first chunk: the line says so, with the prompt it
    // sent and the tokens it got.
    let body = serde_json::json!({
        "model": "armature-test", "prompt": "Tell me a long story", "max_tokens": 2000, "stream": true,
        "ignore_eos": true
    })
    .to_string();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        client,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nx-request-id: trace-4\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 512];
    let n = client.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));
    drop(client);
    assert!(wait_until(Duration::from_secs(10), || access_lines(&serve.log_text()).len() >= 4), "{}", serve.log_text());
    let gone = &access_lines(&serve.log_text())[3];
    assert_eq!((&gone["tag"], &gone["outcome"]), (&Value::from("trace-4"), &Value::from("client_gone")), "{gone}");
    assert_eq!(gone["prompt_tokens"], "Tell me a long story".len());
    let got = gone["completion_tokens"].as_u64().unwrap();
    assert!(got < 2000, "{got} tokens: the stream stopped with its client");
}
