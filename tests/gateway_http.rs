//! Gateway behaviour over raw HTTP against a real `armature serve`: body limits, overload,
//! client disconnects, health and metrics, a reasoning answer's `reasoning_content`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

/// One node, one worker that takes one sequence at a time and queues none; slow steps.
fn config(port: u16) -> String {
    format!(
        r#"
[cluster]
name = "gw"
cookie = "c"

[model]
source = "test"
test = {{ step_delay = "20ms" }}

[gateway]
max_body = "2KiB"

[[nodes]]
name = "n0"
control = "127.0.0.1:{control}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", max_batch = 1, max_queue = 0 }}]
"#,
        control = free_port()
    )
}

fn start(name: &str) -> (Proc, u16) {
    let port = free_port();
    let dir = temp_dir(name);
    let path = dir.join("cluster.toml");
    std::fs::write(&path, config(port)).unwrap();
    let p = Proc::spawn(&["serve", "--config", path.to_str().unwrap()], dir.join("serve.log")).owning(dir);
    assert!(wait_health(port, 200, Duration::from_secs(30)), "not healthy");
    (p, port)
}

/// Open a streaming completion and read its first bytes; returns the open socket.
fn open_stream(port: u16, max_tokens: u32) -> TcpStream {
    // `ignore_eos`: a sampled end-of-sequence token must not end the stream (and free its slot)
    // early.
    let body = format!(
        r#"{{"model":"armature-test","prompt":"hello","max_tokens":{max_tokens},"stream":true,"ignore_eos":true}}"#
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    s
}

#[test]
fn limits_overload_disconnect_health_and_metrics() {
    let (_p, port) = start("gateway-http");

    // Health and models.
    let (status, _, body) = http("GET", port, "/health", None);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["workers"], serde_json::json!(["n0/cpu"]));
    let (status, _, body) = http("GET", port, "/v1/models", None);
    assert_eq!((status, json(&body)["data"][0]["id"].as_str()), (200, Some("armature-test")));

    // 413 for a body over max_body (2 KiB), with an OpenAI error body.
    let big = format!(r#"{{"model":"armature-test","prompt":"{}"}}"#, "a".repeat(4096));
    let (status, _, body) = http("POST", port, "/v1/completions", Some(&big));
    assert_eq!(status, 413);
    assert_eq!(json(&body)["error"]["code"], "request_too_large");

    // 404 with an OpenAI body for an unknown path, 405 for a known one with the wrong method.
    let (status, _, body) = http("GET", port, "/v2/nothing", None);
    assert_eq!((status, json(&body)["error"]["type"].as_str()), (404, Some("invalid_request_error")));
    let (status, _, body) = http("GET", port, "/v1/chat/completions", None);
    assert_eq!((status, json(&body)["error"]["code"].as_str()), (405, Some("method_not_allowed")));

    // Tokenize and back (the test tokenizer: one id per byte), and through the chat template.
    let (status, _, body) = http("POST", port, "/tokenize", Some(r#"{"model":"armature-test","prompt":"hello"}"#));
    assert_eq!(status, 200, "{body}");
    let t = json(&body);
    assert_eq!(t["tokens"], serde_json::json!([104, 101, 108, 108, 111]));
    assert_eq!(t["count"], 5);
    assert!(t["max_model_len"].as_u64().unwrap() > 5);
    let messages = r#"{"model":"armature-test","messages":[{"role":"user","content":"hello"}]}"#;
    let (_, _, body) = http("POST", port, "/tokenize", Some(messages));
    assert!(json(&body)["count"].as_u64().unwrap() > 5, "the template adds its turns: {body}");
    let (status, _, body) = http("POST", port, "/detokenize", Some(r#"{"model":"armature-test","tokens":[104,105]}"#));
    assert_eq!((status, json(&body)["prompt"].as_str()), (200, Some("hi")));
    let (status, _, body) =
        http("POST", port, "/detokenize", Some(r#"{"model":"armature-test","tokens":[104,999999]}"#));
    assert_eq!((status, json(&body)["error"]["param"].as_str()), (400, Some("tokens[1]")));
    let (status, _, _) = http("POST", port, "/tokenize", Some(r#"{"model":"nope","prompt":"x"}"#));
    assert_eq!(status, 404);

    // The only batch slot is taken and nothing may queue: a second request gets 429.
    let stream = open_stream(port, 4000);
    let (status, head, body) =
        http("POST", port, "/v1/completions", Some(r#"{"model":"armature-test","prompt":"x","max_tokens":2}"#));
    assert_eq!(status, 429, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(json(&body)["error"]["code"], "overloaded");

    // The client goes away: the worker cancels the request and frees the slot.
    drop(stream);
    assert!(
        wait_until(Duration::from_secs(10), || metric(port, "armature_requests_cancelled_total") >= 1.0),
        "no cancellation counted"
    );
    // Greedy, so the test executor's end-of-sequence token cannot cut the completion short.
    let (status, _, body) = http(
        "POST",
        port,
        "/v1/completions",
        Some(r#"{"model":"armature-test","prompt":"x","max_tokens":2,"temperature":0}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["usage"]["completion_tokens"], 2);

    // The same prompt again reuses its cached KV blocks.
    let long = r#"{"model":"armature-test","prompt":"a prompt that fills a few KV blocks of sixteen tokens each","max_tokens":2}"#;
    assert_eq!(http("POST", port, "/v1/completions", Some(long)).0, 200);
    assert_eq!(metric(port, "armature_prefix_cache_tokens_total"), 0.0);
    assert_eq!(http("POST", port, "/v1/completions", Some(long)).0, 200);
    assert_eq!(metric(port, "armature_prefix_cache_tokens_total"), 48.0, "three full 16-token blocks from the cache");

    // Metrics count what happened.
    assert!(metric(port, "armature_http_requests_total{path=\"/v1/completions\",status=\"429\"}") >= 1.0);
    assert!(metric(port, "armature_http_requests_total{path=\"/v1/completions\",status=\"413\"}") >= 1.0);
    assert!(metric(port, "armature_generated_tokens_total") >= 2.0);

    // A reasoning answer (forced here by a regex): its `<think>` block is `reasoning_content`,
    // whole and streamed, and the rest is the content.
    let think = |stream: bool| {
        serde_json::json!({
            "model": "armature-test", "messages": [{"role": "user", "content": "think"}], "max_tokens": 40,
            "temperature": 1.0, "seed": 5, "stream": stream,
            "structured_outputs": { "regex": "<think>[a-z]{3,6} [a-z]{3,6}</think>\\n[a-z]{2,5}\\." }
        })
        .to_string()
    };
    let (status, _, body) = http("POST", port, "/v1/chat/completions", Some(&think(false)));
    assert_eq!(status, 200, "{body}");
    let message = json(&body)["choices"][0]["message"].clone();
    let (thought, said) = (message["reasoning_content"].as_str().unwrap(), message["content"].as_str().unwrap());
    assert!(thought.contains(' ') && !thought.contains("think>"), "{message}");
    assert!(said.ends_with('.') && !said.contains('<') && !said.starts_with('\n'), "{message}");
    let (status, _, sse) = http("POST", port, "/v1/chat/completions", Some(&think(true)));
    assert_eq!(status, 200);
    let (mut r, mut c) = (String::new(), String::new());
    for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|l| *l != "[DONE]") {
        let delta = &json(line)["choices"][0]["delta"];
        r.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
        c.push_str(delta["content"].as_str().unwrap_or(""));
    }
    assert_eq!((r.as_str(), c.as_str()), (thought, said), "streamed as whole");
}
