//! Request migration: a three-node `armature launch` (gateway and router on one node, a worker
//! on each of the two others; the deterministic test executor at 100 ms a step, whose next token
//! depends only on the tokens so far, so a continuation must reproduce an uninterrupted run). The node serving a streaming greedy completion is SIGKILLed
//! mid-stream; the gateway moves the request to the other worker with its prompt and the tokens
//! generated so far, and the client's stream goes on: no error, nothing repeated or missing (the
//! text equals an uninterrupted run's), usage counts every token once, and the migration is
//! counted; the prompt's scores (`echo` with `logprobs`) come once, and every token's log
//! probability once; the output's regex constraint holds across the move (the new worker's
//! matcher goes on from the tokens already streamed). Then the same with a node that is stopped (SIGSTOP) instead: its lease expires and the
//! stream moves on. Then with SIGTERM: the node drains (its worker takes nothing new, so a request
//! sent meanwhile goes to the other worker, and its stream goes on there) until
//! `shutdown_grace` (1 s), stops, and the rest of the stream moves.

mod support;

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

/// Few enough that the test executor's end-of-text token never wins (its logit grows with the
/// tokens generated, which a continuation counts from its own start).
const MAX_TOKENS: u64 = 30;

/// The output's constraint: three digits, then words. A worker that took a migrated request and
/// restarted the grammar would write digits again mid-stream.
const REGEX: &str = "[0-9]{3}(the |sea |ship |sail |harbor |north |south )+";
const WORDS: [&str; 7] = ["the ", "sea ", "ship ", "sail ", "harbor ", "north ", "south "];

/// Whether a completion matches `REGEX`.
fn matches_regex(text: &str) -> bool {
    let Some(mut rest) = text.get(3..).filter(|_| text.as_bytes()[..3].iter().all(u8::is_ascii_digit)) else {
        return false;
    };
    while !rest.is_empty() {
        match WORDS.iter().find(|w| rest.starts_with(*w)) {
            Some(w) => rest = &rest[w.len()..],
            None => return false,
        }
    }
    text.len() > 3
}

fn body(stream: bool) -> String {
    serde_json::json!({
        "model": "armature-test",
        "prompt": "Here is a long story about a lighthouse keeper and the ships she saw:",
        "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": true, "stream": stream,
        "stream_options": { "include_usage": true }, "echo": true, "logprobs": 1,
        "structured_outputs": { "regex": REGEX }
    })
    .to_string()
}

/// What a stream said: its text (the prompt echoed, then the completion), its completion tokens,
/// and every token's log probability (the prompt's first is None).
struct Streamed {
    text: String,
    completion: u64,
    logprobs: Vec<Option<f64>>,
}

/// Read an SSE stream; panics on an error event.
fn read_stream(sse: &str) -> Streamed {
    let mut out = Streamed { text: String::new(), completion: 0, logprobs: Vec::new() };
    for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            return out;
        }
        let v = json(line);
        assert!(v.get("error").is_none(), "error event: {line}");
        if let Some(t) = v["choices"][0]["text"].as_str() {
            out.text.push_str(t);
        }
        if let Some(lp) = v["choices"][0]["logprobs"]["token_logprobs"].as_array() {
            out.logprobs.extend(lp.iter().map(serde_json::Value::as_f64));
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            out.completion = n;
        }
    }
    panic!("the stream did not end with [DONE]: {sse}");
}

fn both_up(port: u16) -> bool {
    let (status, _, body) = http("GET", port, "/health", None);
    status == 200 && json(&body)["workers"].as_array().is_some_and(|w| w.len() == 2)
}

/// Start the streaming request on a thread; once the router has placed it, return the thread and
/// the node serving it.
fn start_stream(port: u16) -> (JoinHandle<(u16, String, String)>, String) {
    let placed = || json(&http("GET", port, "/debug/router", None).2)["recent"].as_array().cloned().unwrap_or_default();
    let before = placed().len();
    let streaming = std::thread::spawn(move || http("POST", port, "/v1/completions", Some(&body(true))));
    let mut serving = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        let recent = placed();
        if recent.len() > before {
            serving = recent.last().unwrap()["worker"].as_str().unwrap().to_string();
        }
        !serving.is_empty()
    }));
    let node = serving.split('/').next().unwrap().to_string();
    (streaming, node)
}

#[test]
fn a_stream_survives_the_death_of_its_worker() {
    let dir = temp_dir("migration");
    let port = free_port();
    let config = dir.join("cluster.toml");
    let text = format!(
        r#"[cluster]
name = "migration"
cookie = "change-me"
heartbeat_interval = "250ms"
lease_timeout = "2s"
shutdown_grace = "1s"

[model]
source = "test"
test = {{ step_delay = "100ms" }}

[[nodes]]
name = "gw"
control = "127.0.0.1:{}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]

[[nodes]]
name = "w1"
control = "127.0.0.1:{}"
workers = [{{ device = "cpu" }}]

[[nodes]]
name = "w2"
control = "127.0.0.1:{}"
workers = [{{ device = "cpu" }}]
"#,
        free_port(),
        free_port(),
        free_port()
    );
    std::fs::write(&config, text).unwrap();
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    assert!(wait_until(Duration::from_secs(120), || both_up(port)), "cluster did not start: {}", launch.log_text());

    // The uninterrupted reference.
    let (status, _, sse) = http("POST", port, "/v1/completions", Some(&body(true)));
    assert_eq!(status, 200);
    let reference = read_stream(&sse);
    assert_eq!(reference.completion, MAX_TOKENS);
    let prompt = "Here is a long story about a lighthouse keeper and the ships she saw:";
    assert!(reference.text.starts_with(prompt), "the prompt is echoed");
    assert!(matches_regex(&reference.text[prompt.len()..]), "{:?}", reference.text);
    let prompt_len = reference.logprobs.len() - MAX_TOKENS as usize;
    assert!(prompt_len > 10 && reference.logprobs[0].is_none() && reference.logprobs[1..].iter().all(Option::is_some));

    // The same request, twice: once it is under way, its worker's node is killed (SIGKILL), then
    // stopped (SIGSTOP: its connection stays open, and only its lease, 2 s, says it is gone).
    // Either way the stream moves on, and the stopped worker's output is never used.
    let mut starts: HashMap<String, usize> = HashMap::new();
    for (round, sig) in [(1.0, Signal::SIGKILL), (2.0, Signal::SIGSTOP), (3.0, Signal::SIGTERM)] {
        assert!(wait_until(Duration::from_secs(60), || both_up(port)), "the killed node did not come back");
        let (streaming, node) = start_stream(port);
        // Some tokens out (one per 100 ms step), most still to come.
        std::thread::sleep(Duration::from_millis(1000));
        let skip = starts.entry(node.clone()).or_insert(0);
        let pid = started_pid(&launch, &node, *skip, Duration::from_secs(5)).expect("the serving node's pid");
        // A killed (or drained and stopped) node is started again by launch.
        *skip += usize::from(sig != Signal::SIGSTOP);
        kill(Pid::from_raw(pid), sig).unwrap();
        if sig == Signal::SIGTERM {
            // While it drains, a new request goes to the other worker.
            std::thread::sleep(Duration::from_millis(300));
            let recent = || json(&http("GET", port, "/debug/router", None).2)["recent"].as_array().cloned().unwrap();
            let before = recent().len();
            let short = r#"{"model":"armature-test","prompt":"short","max_tokens":3,"temperature":0}"#;
            let (status, head, _) = http("POST", port, "/v1/completions", Some(short));
            assert_eq!(status, 200, "{head}");
            let after = recent();
            let placed = after.get(before).expect("the short request's placement");
            assert!(
                !placed["worker"].as_str().unwrap().starts_with(&format!("{node}/")),
                "placed on the draining node"
            );
        }
        let (status, _, sse) = streaming.join().unwrap();
        if sig == Signal::SIGSTOP {
            kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
        }
        assert_eq!(status, 200);
        let got = read_stream(&sse);
        assert_eq!(got.text, reference.text, "{sig}: the migrated stream differs from the uninterrupted one");
        assert_eq!(got.completion, MAX_TOKENS, "usage counts every token once");
        // Log probabilities: the prompt scored once (before the move) and one per token, each
        // where it belongs. The test model's end-of-text logit grows with the tokens generated,
        // which a continuation counts from its own start, so the values after the move may
        // differ a little (the log-softmax's normaliser); another token's would be far off.
        assert_eq!(got.logprobs.len(), reference.logprobs.len(), "{sig}: {:?}", got.logprobs);
        assert_eq!(got.logprobs[..prompt_len], reference.logprobs[..prompt_len], "{sig}: the prompt's scores");
        for (i, (a, b)) in got.logprobs.iter().zip(&reference.logprobs).enumerate().skip(prompt_len) {
            let (a, b) = (a.expect("a generated token's log probability"), b.unwrap());
            assert!((a - b).abs() < 0.1, "{sig}: token {i}: {a} against {b} uninterrupted");
        }
        assert_eq!(metric(port, "armature_request_migrations_total"), round, "{}", launch.log_text());
    }
    drop(launch);
}
