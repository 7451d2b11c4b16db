//! The gateway on an open network: `/health` stays quick while huge bodies are refused (they are
//! sized up before the tokenizer runs, and tokenizing is off the async runtime); a queued stream
//! gets its headers at once and a queue timeout in the stream; slow headers and slow bodies are cut
//! off; oversized headers get a 431 in the API's shape.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn serve(name: &str, model: &str, gateway: &str, worker: &str) -> (Proc, u16) {
    let port = free_port();
    let dir = temp_dir(name);
    let text = format!(
        r#"
[cluster]
name = "robust"
cookie = "c"

[model]
{model}

[gateway]
{gateway}

[[nodes]]
name = "n0"
control = "127.0.0.1:{control}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", {worker} }}]
"#,
        control = free_port()
    );
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    let p = Proc::spawn(&["serve", "--config", path.to_str().unwrap()], dir.join("serve.log")).owning(dir);
    assert!(wait_health(port, 200, Duration::from_secs(180)), "not healthy");
    (p, port)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn health_answers_at_once_while_six_huge_bodies_are_refused() {
    // The real tokenizer: this is what took 13 s of the async runtime per six bodies before.
    let (_serve, port) = serve("robust-health", "source = \"default\"", "", "kv_blocks = 256");
    let prompt = "lorem ipsum dolor sit amet ".repeat((4 << 20) / 28);
    let body = format!(r#"{{"model":"SmolLM2-135M-Instruct","prompt":"{prompt}","max_tokens":1}}"#);
    assert!(body.len() <= 4 << 20, "within max_body");
    let body = std::sync::Arc::new(body);
    let senders: Vec<_> = (0..6)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || http("POST", port, "/v1/completions", Some(&body)))
        })
        .collect();
    // Probe health while they are sent and refused.
    let mut probes = Vec::new();
    let start = Instant::now();
    while probes.len() < 10 && start.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        let (status, _, _) = http("GET", port, "/health", None);
        assert_eq!(status, 200);
        probes.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in senders {
        let (status, _, text) = s.join().unwrap();
        assert_eq!(status, 400, "{text}");
        assert_eq!(json(&text)["error"]["code"], "context_length_exceeded");
        assert!(text.contains("refused before tokenizing"), "{text}");
    }
    // A robustness check, not a benchmark: the broken behaviour was seconds.
    let m = median(probes.clone());
    assert!(m < Duration::from_millis(100), "health median {m:?} over {probes:?}");
    assert!(metric(port, "armature_http_refused_total{reason=\"cannot_fit\"}") >= 6.0);
}

/// Send a streaming request and return the socket and what arrived within `within`.
fn open_stream(port: u16, max_tokens: u32, within: Duration) -> (TcpStream, String) {
    let body = format!(
        r#"{{"model":"armature-test","prompt":"hello","max_tokens":{max_tokens},"stream":true,"ignore_eos":true}}"#
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    (s, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn a_queued_stream_gets_headers_at_once_then_its_queue_timeout_and_slow_clients_are_cut_off() {
    let (_serve, port) = serve(
        "robust-queue",
        "source = \"test\"\ntest = { step_delay = \"50ms\" }",
        "queue_timeout = \"1500ms\"\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"",
        "max_batch = 1, max_queue = 8",
    );
    // The worker runs one sequence at a time: 100 tokens at 50 ms take about 5 s.
    let (_busy, first) = open_stream(port, 100, Duration::from_secs(5));
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The second waits in the worker's queue, yet its stream has started.
    let (mut queued, head) = open_stream(port, 4, Duration::from_secs(1));
    assert!(head.starts_with("HTTP/1.1 200"), "no headers for a queued stream within 1 s: {head:?}");
    assert!(head.to_ascii_lowercase().contains("text/event-stream"), "{head}");
    // After the queue timeout the stream ends with an error that says so.
    queued.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = String::new();
    let _ = queued.read_to_string(&mut rest);
    assert!(rest.contains("queue_timeout") && rest.contains("\"error\""), "{rest}");
    assert!(!rest.contains("[DONE]"), "{rest}");

    // Headers that never finish: the connection is closed after the header timeout.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = slow.read_to_end(&mut sink);
    assert!(start.elapsed() < Duration::from_secs(5), "slow headers held for {:?}", start.elapsed());
    // An idle kept-alive connection is closed the same way.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let _ = idle.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(start.elapsed() < Duration::from_secs(5), "an idle connection was held for {:?}", start.elapsed());

    // A body that stops halfway gets 408.
    let mut partial = TcpStream::connect(("127.0.0.1", port)).unwrap();
    partial
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
        .unwrap();
    partial.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = partial.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    // Headers past the limits (64 KiB, 100 headers): a 431 in the route's error shape. Far past
    // them hyper answers alone, with no body.
    let send = |path: &str, headers: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let _ = s.write_all(head.as_bytes());
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let big = format!("X-Big: {}\r\n", "x".repeat(70 * 1024));
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    for headers in [&big, &many] {
        let answer = send("/v1/completions", headers);
        assert!(answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(300)]);
        let body = json(answer.split("\r\n\r\n").nth(1).unwrap_or(""));
        assert_eq!(body["error"]["code"], "request_header_fields_too_large", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    let answer = send("/v1/messages", &big);
    let body = json(answer.split("\r\n\r\n").nth(1).unwrap_or(""));
    assert_eq!(
        (body["type"].as_str(), body["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error")),
        "{body}"
    );
    let huge = format!("X-Big: {}\r\n", "x".repeat(2 << 20));
    assert!(send("/v1/completions", &huge).starts_with("HTTP/1.1 431"));
    assert_eq!(http("GET", port, "/health", None).0, 200, "and the gateway serves on");
}
