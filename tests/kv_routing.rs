//! The KV-aware router on a real cluster (`armature launch`, four processes, the test executor):
//! workers publish KV events to every router; a prompt that shares a prefix with an earlier one
//! goes to the worker that holds it; a worker that publishes nothing is routed in approximate
//! mode; two routers fed the same events agree; a restarted router rebuilds its index from the
//! workers' dumps; a worker whose events stop is reported.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::*;

/// Prompt blocks of 16 tokens; the test tokenizer makes one token per byte.
const PROMPT_BLOCKS: u64 = 20;

fn topology(p0: u16, p1: u16) -> String {
    let c = || format!("127.0.0.1:{}", free_port());
    format!(
        r#"
[cluster]
name = "kv-routing"
cookie = "kv-routing-test"
heartbeat_interval = "250ms"
lease_timeout = "4s"

[model]
source = "test"
test = {{ step_delay = "2ms" }}

[router]
event_silence = "1s"

[supervision]
backoff_initial = "500ms"

[[nodes]]
name = "n0"
control = "{}"
gateway = "127.0.0.1:{p0}"
roles = ["gateway", "router"]

[[nodes]]
name = "n1"
control = "{}"
gateway = "127.0.0.1:{p1}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", kv_blocks = 512 }}]

[[nodes]]
name = "n2"
control = "{}"
workers = [{{ device = "cpu", kv_blocks = 512 }}]

[[nodes]]
name = "n3"
control = "{}"
workers = [{{ device = "cpu", kv_blocks = 512, kv_events = false }}]
"#,
        c(),
        c(),
        c(),
        c()
    )
}

/// A prompt of exactly `PROMPT_BLOCKS` blocks, different for each `k`.
fn prompt(k: usize) -> String {
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
    let mut s = format!("Document {k}:");
    let mut i = k * 7;
    while s.len() < (PROMPT_BLOCKS * 16) as usize {
        s.push(' ');
        s.push_str(words[i % words.len()]);
        i = (i * 31 + 5) % 1009;
    }
    s.truncate((PROMPT_BLOCKS * 16) as usize);
    s
}

/// Complete `text` on the gateway at `port`; returns the worker the router placed it on and the
/// prompt blocks it was believed to hold.
fn complete(port: u16, text: &str) -> (String, u64) {
    let body = serde_json::json!({ "model": "armature-test", "prompt": text, "max_tokens": 4, "temperature": 0 });
    let (status, _, resp) = http("POST", port, "/v1/completions", Some(&body.to_string()));
    assert_eq!(status, 200, "{resp}");
    let id = json(&resp)["id"].as_str().expect("id").trim_start_matches("cmpl-").to_string();
    let status = router(port);
    let d = status["recent"].as_array().unwrap().iter().find(|d| d["request"] == id.as_str()).cloned();
    let d = d.unwrap_or_else(|| panic!("no decision for {id} in {status}"));
    (d["worker"].as_str().unwrap().to_string(), d["overlap_blocks"].as_u64().unwrap())
}

fn router(port: u16) -> Value {
    let (status, _, body) = http("GET", port, "/debug/router", None);
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// Per worker, (device blocks, assumed blocks) in a router's view.
fn held(status: &Value, worker: &str) -> (u64, u64) {
    let w = status["workers"].as_array().unwrap().iter().find(|w| w["worker"] == worker);
    w.map_or((0, 0), |w| (w["device_blocks"].as_u64().unwrap(), w["assumed_blocks"].as_u64().unwrap()))
}

/// The two routers agree on what the workers published, and hold what `placed` says.
fn routers_agree(p0: u16, p1: u16, min_device_blocks: &[(&str, u64)]) -> bool {
    let (a, b) = (router(p0), router(p1));
    let device = |s: &Value| {
        let mut v: Vec<(String, u64)> = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["worker"].as_str().unwrap().to_string(), w["device_blocks"].as_u64().unwrap()))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
    };
    a["fingerprint"] == b["fingerprint"]
        && device(&a) == device(&b)
        && min_device_blocks.iter().all(|(w, n)| held(&a, w).0 >= *n)
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill {pid} {sig}: {e}"));
}

#[test]
fn kv_routing_across_nodes() {
    let (p0, p1) = (free_port(), free_port());
    let dir = temp_dir("kv-routing");
    let config = dir.join("cluster.toml");
    std::fs::write(&config, topology(p0, p1)).unwrap();
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    let all_workers = || {
        [p0, p1].iter().all(|&p| {
            let (status, _, body) = http("GET", p, "/health", None);
            status == 200 && json(&body)["workers"].as_array().is_some_and(|w| w.len() == 3)
        })
    };
    assert!(wait_until(Duration::from_secs(60), all_workers), "cluster did not come up");

    // Six different prompts: with nothing cached, load spreads them over all three workers.
    let first: Vec<String> = (0..6).map(|k| complete(p0, &prompt(k)).0).collect();
    let used: BTreeSet<&str> = first.iter().map(String::as_str).collect();
    assert_eq!(used, BTreeSet::from(["n1/cpu", "n2/cpu", "n3/cpu"]), "{first:?}");
    let count = |w: &str| first.iter().filter(|x| *x == w).count() as u64;
    let expect = [("n1/cpu", count("n1/cpu") * PROMPT_BLOCKS), ("n2/cpu", count("n2/cpu") * PROMPT_BLOCKS)];
    assert!(
        wait_until(Duration::from_secs(5), || routers_agree(p0, p1, &expect)),
        "routers disagree or miss blocks:\n{}\n{}",
        router(p0),
        router(p1)
    );
    // n3 publishes nothing: n0's router assumes what it placed there; n1's placed nothing there.
    let (s0, s1) = (router(p0), router(p1));
    assert_eq!(held(&s0, "n3/cpu"), (0, count("n3/cpu") * PROMPT_BLOCKS));
    assert_eq!(held(&s1, "n3/cpu"), (0, 0));
    assert!(s0["recent"][0]["explanation"].as_str().unwrap().contains("score"), "{s0}");

    // The same documents with new questions: each goes where its prefix is, in full.
    for (k, w) in first.iter().enumerate() {
        let (again, overlap) = complete(p0, &format!("{} Question {k}?", prompt(k)));
        assert_eq!((&again, overlap), (w, PROMPT_BLOCKS), "prompt {k}");
    }
    // Through the other gateway too, for the workers that publish.
    for (k, w) in first.iter().enumerate().filter(|(_, w)| *w != "n3/cpu") {
        assert_eq!(complete(p1, &format!("{} Another {k}?", prompt(k))), (w.clone(), PROMPT_BLOCKS), "prompt {k}");
    }

    // Metrics of n0's router.
    let text = http("GET", p0, "/metrics", None).2;
    let decisions = metric(p0, "armature_router_decisions_total{policy=\"kv\",outcome=\"placed\"}");
    assert!(decisions >= 12.0, "{text}");
    assert!(metric(p0, "armature_router_overlap_blocks_total") >= (6 * PROMPT_BLOCKS) as f64);
    assert!(metric(p0, "armature_router_prompt_blocks_total") >= (12 * PROMPT_BLOCKS) as f64);
    assert!(metric(p0, "armature_router_decision_seconds_count") >= 12.0);
    assert!(metric(p0, "armature_router_event_lag_seconds_count") > 0.0);
    assert!(metric(p0, "armature_router_kv_events_total{outcome=\"applied\"}") > 0.0);
    assert!(wait_until(Duration::from_secs(3), || metric(p0, "armature_router_index_blocks") > 0.0));

    // Kill n0: its fresh router hears heartbeats from workers whose past it never saw, asks them
    // for dumps, and ends up agreeing with n1's router again.
    let n0 = started_pid(&launch, "n0", 0, Duration::from_secs(5)).expect("n0 pid");
    signal(n0, Signal::SIGKILL);
    started_pid(&launch, "n0", 1, Duration::from_secs(20)).expect("n0 restarted");
    assert!(wait_until(Duration::from_secs(30), || http("GET", p0, "/health", None).0 == 200));
    assert!(
        wait_until(Duration::from_secs(10), || routers_agree(p0, p1, &expect)),
        "restarted router did not resync:\n{}\n{}",
        router(p0),
        router(p1)
    );
    assert!(metric(p0, "armature_router_resyncs_total") >= 2.0, "one dump per publishing worker");
    let (k, w) = first.iter().enumerate().find(|(_, w)| *w != "n3/cpu").unwrap();
    assert_eq!(complete(p0, &format!("{} Once more?", prompt(k))), (w.clone(), PROMPT_BLOCKS));

    // Stop n2 for longer than router.event_silence (1 s) but within its lease (4 s): the routers
    // say so loudly, and again when its events resume.
    let n2 = started_pid(&launch, "n2", 0, Duration::from_secs(5)).expect("n2 pid");
    signal(n2, Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2500));
    signal(n2, Signal::SIGCONT);
    let log = || launch.log_text();
    assert!(
        wait_until(Duration::from_secs(5), || log().contains("NO KV EVENTS") && log().contains("arrive again")),
        "{}",
        log()
    );
    let warned = log().lines().any(|l| l.contains("NO KV EVENTS") && l.contains("n2/cpu"));
    assert!(warned, "the warning names the worker");
}
