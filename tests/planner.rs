//! The planner on a live cluster (test executor, disaggregated: a gateway and router node with
//! the planner, one prefill and two decode workers). First long prompts with short answers keep
//! the prefill pool queueing past the TTFT SLO: the planner turns a decode worker into a prefill
//! worker. Then short prompts with long answers leave both SLOs with room: it turns one back.
//! With a spare device instead of the second decode worker, it starts the spare as a prefill
//! worker for the long prompts and drains and stops it after. Every request completes in full
//! throughout.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

/// The cluster: a gateway and router node, and one node per `(name, role, spare)` worker.
fn topology(gateway: u16, certs: &std::path::Path, workers: &[(&str, &str, bool)]) -> String {
    let p = || format!("127.0.0.1:{}", free_port());
    let worker = |&(name, role, spare): &(&str, &str, bool)| {
        format!(
            "[[nodes]]\nname = \"{name}\"\ncontrol = \"{}\"\ndata = \"{}\"\nworkers = [{{ device = \"cpu\", role = \"{role}\", spare = {spare}, max_batch_tokens = 32 }}]\n",
            p(),
            p()
        )
    };
    format!(
        r#"
[cluster]
name = "planner"
cookie = "planner"
heartbeat_interval = "250ms"
lease_timeout = "2s"

[model]
source = "test"
test = {{ step_delay = "40ms" }}

[router]
disagg_min_blocks = 2

[transport]
certs = {certs:?}

[planner]
enabled = true
mode = "load"
interval = "1s"
slo_ttft = "1500ms"
slo_itl = "400ms"
hysteresis = 2

[[nodes]]
name = "gw"
control = "{}"
data = "{}"
gateway = "127.0.0.1:{gateway}"
roles = ["gateway", "router"]

{}"#,
        p(),
        p(),
        workers.iter().map(worker).collect::<Vec<_>>().join("\n"),
    )
}

/// Clients sending `(blocks, max_tokens)` requests until `stop`; each result: (status, completion
/// tokens, max_tokens).
fn load(
    port: u16,
    blocks: usize,
    max_tokens: u64,
    stop: Arc<AtomicBool>,
    seed: usize,
) -> Vec<std::thread::JoinHandle<Vec<(u16, u64, u64)>>> {
    (0..4)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut k = seed + c * 1000;
                while !stop.load(Ordering::Relaxed) {
                    let body = serde_json::json!({
                        "model": "armature-test", "prompt": prompt(k, blocks), "max_tokens": max_tokens,
                        "temperature": 0, "ignore_eos": true
                    });
                    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body.to_string()));
                    let n =
                        if status == 200 { json(&text)["usage"]["completion_tokens"].as_u64().unwrap_or(0) } else { 0 };
                    out.push((status, n, max_tokens));
                    k += 1;
                }
                out
            })
        })
        .collect()
}

fn roles(port: u16) -> Vec<(String, String)> {
    let (status, _, body) = http("GET", port, "/debug/router", None);
    if status != 200 {
        return Vec::new();
    }
    let s = json(&body);
    s["roles"]
        .as_array()
        .map(|a| a.iter().map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().to_string())).collect())
        .unwrap_or_default()
}

fn count(port: u16, role: &str) -> usize {
    roles(port).iter().filter(|(_, r)| r == role).count()
}

#[test]
fn the_planner_flips_roles_as_the_load_shifts_and_nothing_fails() {
    let port = free_port();
    let dir = temp_dir("planner");
    let certs = dir.join("certs");
    let config = dir.join("cluster.toml");
    let workers = [("a", "prefill", false), ("b", "decode", false), ("c", "decode", false)];
    std::fs::write(&config, topology(port, &certs, &workers)).unwrap();
    cert_init(&config);
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    let up = || count(port, "prefill") == 1 && count(port, "decode") == 2;
    assert!(wait_until(Duration::from_secs(60), up), "cluster did not start: {:?}\n{}", roles(port), launch.log_text());
    let flips = |to: &str| metric(port, &format!("armature_planner_flips_total{{to=\"{to}\"}}"));
    let mut results = Vec::new();

    // Long prompts, two-token answers: the one prefill worker queues them.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(port, 30, 2, stop.clone(), 1);
    let grew = wait_until(Duration::from_secs(40), || flips("prefill") >= 1.0 && count(port, "prefill") == 2);
    stop.store(true, Ordering::Relaxed);
    results.extend(clients.into_iter().flat_map(|c| c.join().unwrap()));
    assert!(grew, "no decode worker turned prefill: {:?}\n{}", roles(port), launch.log_text());

    // Short prompts (kept on the decode workers), long answers: both SLOs have room.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(port, 1, 40, stop.clone(), 7);
    let shrank = wait_until(Duration::from_secs(40), || flips("decode") >= 1.0 && count(port, "prefill") == 1);
    stop.store(true, Ordering::Relaxed);
    results.extend(clients.into_iter().flat_map(|c| c.join().unwrap()));
    assert!(shrank, "no prefill worker turned back: {:?}\n{}", roles(port), launch.log_text());

    let failed: Vec<_> = results.iter().filter(|(s, n, want)| *s != 200 || n != want).collect();
    println!(
        "planner: {} requests, {} failed, flips to prefill {}, to decode {}",
        results.len(),
        failed.len(),
        flips("prefill"),
        flips("decode")
    );
    assert!(results.len() >= 8, "the load ran ({} requests)", results.len());
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(launch.log_text().contains("planner flips a worker"), "decisions are logged");
    // The router hears how full each worker is (the planner's KV-use input), with their events.
    let status = json(&http("GET", port, "/debug/router", None).2);
    let totals: Vec<u64> =
        status["workers"].as_array().unwrap().iter().filter_map(|w| w["load"]["kv_total"].as_u64()).collect();
    assert!(!totals.is_empty() && totals.iter().all(|&t| t == 2048), "{status}");
    drop(launch);
}

#[test]
fn the_planner_starts_a_spare_device_for_long_prompts_and_stops_it_after() {
    let port = free_port();
    let dir = temp_dir("planner-spare");
    let certs = dir.join("certs");
    let config = dir.join("cluster.toml");
    let workers = [("a", "prefill", false), ("b", "decode", false), ("c", "decode", true)];
    std::fs::write(&config, topology(port, &certs, &workers)).unwrap();
    cert_init(&config);
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    let up = || count(port, "prefill") == 1 && count(port, "decode") == 1;
    assert!(wait_until(Duration::from_secs(60), up), "cluster did not start: {:?}\n{}", roles(port), launch.log_text());
    // The spare's worker is not running: nothing of node c among the workers.
    let spare_running = || roles(port).iter().any(|(w, _)| w == "c/cpu");
    assert!(!spare_running(), "{:?}", roles(port));
    let mut results = Vec::new();

    // Long prompts queue at the one prefill worker: the planner starts the spare as a prefill worker.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(port, 30, 2, stop.clone(), 1);
    let started =
        wait_until(Duration::from_secs(40), || roles(port).iter().any(|(w, r)| w == "c/cpu" && r == "prefill"));
    stop.store(true, Ordering::Relaxed);
    results.extend(clients.into_iter().flat_map(|c| c.join().unwrap()));
    assert!(started, "the spare did not start: {:?}\n{}", roles(port), launch.log_text());
    assert!(metric(port, "armature_planner_starts_total") >= 1.0);

    // Short prompts, long answers: both SLOs have room, the prefill pool shrinks by the spare.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(port, 1, 40, stop.clone(), 7);
    let stopped = wait_until(Duration::from_secs(40), || !spare_running() && count(port, "prefill") == 1);
    stop.store(true, Ordering::Relaxed);
    results.extend(clients.into_iter().flat_map(|c| c.join().unwrap()));
    assert!(stopped, "the spare did not stop: {:?}\n{}", roles(port), launch.log_text());
    assert!(metric(port, "armature_planner_stops_total") >= 1.0);

    let failed: Vec<_> = results.iter().filter(|(s, n, want)| *s != 200 || n != want).collect();
    println!("planner with a spare: {} requests, {} failed", results.len(), failed.len());
    assert!(results.len() >= 8, "the load ran ({} requests)", results.len());
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    let log = launch.log_text();
    assert!(log.contains("planner starts a spare worker") && log.contains("planner stops a spare worker"), "{log}");
    assert!(log.contains("spare worker stopped"), "the worker drained and stopped");
    drop(launch);
}
