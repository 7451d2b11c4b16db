//! Disaggregation under failure, with the test executor (whose stand-in KV cache checks, at every
//! step, that the blocks a sequence reads hold its own tokens, so a misplaced or partial transfer
//! fails loudly): a prefill node SIGKILLed mid-transfer leaves the client with a complete, correct
//! answer computed on the decode worker; after launch restarts it, prompts move again; a worker
//! flipped to another role by message changes what the router does.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

fn topology(gateway: u16, certs: &std::path::Path) -> String {
    let p = || format!("127.0.0.1:{}", free_port());
    format!(
        r#"
[cluster]
name = "disagg-faults"
cookie = "faults"
heartbeat_interval = "250ms"
lease_timeout = "2s"

[model]
source = "test"
test = {{ step_delay = "60ms" }}

[router]
disagg_min_blocks = 2

[transport]
certs = {certs:?}
transfer_timeout = "3s"

[supervision]
backoff_initial = "300ms"

[[nodes]]
name = "prefill"
control = "{}"
data = "{}"
workers = [{{ device = "cpu", role = "prefill", max_batch_tokens = 32 }}]

[[nodes]]
name = "decode"
control = "{}"
data = "{}"
gateway = "127.0.0.1:{gateway}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", role = "decode" }}]
"#,
        p(),
        p(),
        p(),
        p()
    )
}

fn complete(port: u16, prompt: &str) -> String {
    let body = serde_json::json!({ "model": "armature-test", "prompt": prompt, "max_tokens": 8, "temperature": 0 });
    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    json(&text)["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn a_dead_prefill_worker_costs_the_client_nothing() {
    let port = free_port();
    let dir = temp_dir("disagg-faults");
    let certs = dir.join("certs");
    let config = dir.join("cluster.toml");
    std::fs::write(&config, topology(port, &certs)).unwrap();
    cert_init(&config);
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    let both = || {
        let (status, _, body) = http("GET", port, "/health", None);
        status == 200 && json(&body)["workers"].as_array().is_some_and(|w| w.len() == 2)
    };
    assert!(wait_until(Duration::from_secs(60), both), "cluster did not start");
    let m = |name: &str| metric(port, name);

    // A normal transfer first.
    let warm = prompt(1, 6);
    let warm_text = complete(port, &warm);
    assert_eq!(m("armature_disagg_requests_total{outcome=\"transferred\"}"), 1.0);

    // 40 blocks at 2 blocks per 60 ms step: the prefill takes over a second, frame by frame.
    // Its own frames are counted from here: the warm request's already count (a CI run killed
    // the prefill node before the long request reached it, counting those).
    let long = prompt(2, 40);
    let frames = m("armature_transfer_frames_total{direction=\"in\"");
    let req = {
        let long = long.clone();
        std::thread::spawn(move || complete(port, &long))
    };
    assert!(
        wait_until(Duration::from_secs(20), || m("armature_transfer_frames_total{direction=\"in\"") >= frames + 3.0),
        "no frames arrived"
    );
    let prefill_pid = started_pid(&launch, "prefill", 0, Duration::from_secs(5)).expect("prefill pid");
    kill(Pid::from_raw(prefill_pid), Signal::SIGKILL).unwrap();
    let text = req.join().expect("the request completes");
    assert_eq!(m("armature_disagg_requests_total{outcome=\"fallback\"}"), 1.0, "{}", launch.log_text());
    assert!(launch.log_text().contains("remote prefill failed, computing locally"));

    // The decode worker computed it locally; the same prompt again (served from its cache now)
    // gives the same text, so the fallback's answer was the prompt's own.
    assert_eq!(complete(port, &long), text);

    // Launch restarts the prefill node; prompts move again.
    started_pid(&launch, "prefill", 1, Duration::from_secs(20)).expect("prefill restarted");
    assert!(wait_until(Duration::from_secs(30), both), "prefill worker did not come back");
    let transferred = m("armature_disagg_requests_total{outcome=\"transferred\"}");
    let fresh = prompt(3, 8);
    let fresh_text = complete(port, &fresh);
    assert_eq!(m("armature_disagg_requests_total{outcome=\"transferred\"}"), transferred + 1.0);

    // A client that leaves during the transfer: the decode worker stops waiting and tells the
    // prefill worker to stop too.
    let frames = m("armature_transfer_frames_total{direction=\"in\"");
    let body =
        serde_json::json!({ "model": "armature-test", "prompt": prompt(5, 40), "max_tokens": 8, "stream": true });
    let body = body.to_string();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(client, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || m("armature_transfer_frames_total{direction=\"in\"") >= frames + 2.0)
    );
    drop(client);
    assert!(
        wait_until(Duration::from_secs(10), || m("armature_disagg_requests_total{outcome=\"cancelled\"}") == 1.0),
        "the transfer did not stop with its client"
    );
    assert!(
        wait_until(Duration::from_secs(10), || launch.log_text().contains("prefill for another worker failed")),
        "the prefill worker was not told"
    );

    // Flip the decode worker to aggregated by message: it prefills its own prompts from now on.
    let (status, _, body) =
        http("POST", port, "/debug/role", Some(r#"{"worker": "decode/cpu", "role": "aggregated"}"#));
    assert_eq!(status, 200, "{body}");
    let flipped = || {
        let s = json(&http("GET", port, "/debug/router", None).2);
        s["roles"].as_array().unwrap().iter().any(|r| r[0] == "decode/cpu" && r[1] == "aggregated")
    };
    assert!(wait_until(Duration::from_secs(5), flipped));
    complete(port, &prompt(4, 8));
    assert_eq!(
        m("armature_disagg_requests_total{outcome=\"transferred\"}"),
        transferred + 1.0,
        "no transfer after the flip"
    );
    let (status, _, body) = http("POST", port, "/debug/role", Some(r#"{"worker": "nobody/cpu", "role": "decode"}"#));
    assert_eq!(status, 400, "{body}");
    // Earlier answers are unchanged by all of this.
    assert_eq!(complete(port, &warm), warm_text);
    assert_eq!(complete(port, &fresh), fresh_text);
}
