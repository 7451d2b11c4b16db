//! `armature launch` with two nodes: gateway and router on n0, the worker on n1. Requests cross the
//! control plane; a SIGKILLed worker node shows in /health and comes back; a stopped (silent) node
//! is marked dead by its lease.

mod support;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

fn topology(gateway: u16) -> String {
    // Restarts wait 1 s, so the outage is long enough to observe.
    include_str!("../examples/two-nodes.toml")
        .replace("127.0.0.1:7410", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:7411", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:8010", &format!("127.0.0.1:{gateway}"))
        + "\n[supervision]\nbackoff_initial = \"1s\"\n"
}

fn complete(port: u16, prompt: &str) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"model":"SmolLM2-135M-Instruct","prompt":"{prompt}","max_tokens":6,"temperature":0}}"#);
    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body));
    (status, if status == 0 { serde_json::Value::Null } else { json(&text) })
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill {pid} {sig}: {e}"));
}

#[test]
fn two_nodes_serve_survive_sigkill_and_expire_a_silent_node() {
    let port = free_port();
    let dir = temp_dir("two-nodes");
    let config = dir.join("cluster.toml");
    std::fs::write(&config, topology(port)).unwrap();
    let mut launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    assert!(wait_health(port, 200, Duration::from_secs(30)), "cluster did not become healthy");

    // Served across nodes: the only worker is n1's.
    let (_, _, health) = http("GET", port, "/health", None);
    assert_eq!(json(&health)["workers"], serde_json::json!(["n1/cpu"]));
    let (status, first) = complete(port, "across");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["usage"]["completion_tokens"], 6);
    let log = launch.log_text();
    assert!(log.contains("[n0] ") && log.contains("[n1] "), "launch prefixes node output");

    // SIGKILL the worker node: health shows the outage, launch restarts it, requests work again.
    let n1 = started_pid(&launch, "n1", 0, Duration::from_secs(5)).expect("n1 pid");
    signal(n1, Signal::SIGKILL);
    assert!(wait_health(port, 503, Duration::from_secs(5)), "outage not visible in /health");
    let (_, _, body) = http("GET", port, "/health", None);
    assert_eq!(json(&body)["status"], "no_workers");
    let n1_again = started_pid(&launch, "n1", 1, Duration::from_secs(15)).expect("n1 restarted");
    assert_ne!(n1, n1_again);
    assert!(wait_health(port, 200, Duration::from_secs(30)), "no recovery after restart");
    let (status, again) = complete(port, "across");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"], "greedy output is the same after the restart");
    assert!(launch.log_text().contains("[launch] node n1 ("), "launch reports the exit");

    // The gateway's node holds a lease on n1, renewed well within its 2 s.
    let lease = |alive: bool| {
        let (_, _, body) = http("GET", port, "/debug/status", None);
        let peers = json(&body)["peers"].clone();
        peers.as_array().is_some_and(|p| p.iter().any(|l| l["node"] == "n1" && l["alive"] == alive)).then_some(peers)
    };
    let peers = lease(true).expect("n1's lease in /debug/status");
    assert!(peers[0]["heard_ms_ago"].as_u64().unwrap() < 2000 && peers[0]["timeout_ms"] == 2000, "{peers}");

    // SIGSTOP the worker node: its TCP session stays open, so only the lease (2 s) notices.
    signal(n1_again, Signal::SIGSTOP);
    let dead = wait_until(Duration::from_secs(10), || {
        let (status, _, body) = http("GET", port, "/health", None);
        status == 503 && json(&body)["dead_nodes"] == serde_json::json!(["n1"])
    });
    let expired = lease(false);
    signal(n1_again, Signal::SIGCONT);
    let expired = expired.expect("n1 shown dead in /debug/status");
    assert!(expired[0]["heard_ms_ago"].as_u64().unwrap() > 2000, "{expired}");
    assert!(dead, "lease did not mark the silent node dead");
    assert!(wait_health(port, 200, Duration::from_secs(10)), "node did not come back after SIGCONT");
    assert_eq!(complete(port, "back").0, 200);

    // SIGTERM stops launch and every node cleanly.
    signal(launch.pid(), Signal::SIGTERM);
    let status = launch.wait_exit(Duration::from_secs(30)).expect("launch did not stop");
    assert!(status.success(), "{status}");
    let log = launch.log_text();
    assert!(log.contains("[launch] node n0 stopped") && log.contains("[launch] node n1 stopped"), "{log}");
}
