//! The multi-tier KV cache with real processes serving SmolLM2 (`armature serve` of
//! `examples/tiers.toml`, one worker with a tiny pool): a long prompt evicted from the worker is
//! onboarded from the host tier when it comes back (fewer tokens computed, counters show it, the
//! same greedy output); the disk tier's blocks survive a restart of the node and are
//! served after it; a corrupted block file is refused and its blocks recomputed.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const BLOCK: u64 = 16;

/// A prompt of about 700 tokens, different for each `seed`.
fn long_prompt(seed: usize) -> String {
    let topics = ["rivers", "mountains", "bridges", "libraries", "harbors", "orchards"];
    let mut p = format!("Notes on {}, part {seed}.", topics[seed % topics.len()]);
    for i in 0..28 {
        p.push_str(&format!(
            " Paragraph {i}: the {} we visited in year {} had a long history, and the people who lived nearby told stories about it.",
            topics[(seed + i) % topics.len()],
            1800 + 7 * i + seed
        ));
    }
    p
}

fn topology(port: u16, dir: &Path, host: bool, disk: bool) -> String {
    let mut text = include_str!("../examples/tiers.toml")
        .replace("127.0.0.1:7430", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:8030", &format!("127.0.0.1:{port}"))
        .replace("disk_dir = \"cache/kv/n0\"", &format!("disk_dir = {:?}", dir.join("disk").to_str().unwrap()));
    if !host {
        text = text.replace("host = \"256MiB\"\n", "");
    }
    if !disk {
        text = text
            .replace("disk = \"2GiB\"\n", "")
            .lines()
            .filter(|l| !l.starts_with("disk_dir"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    text
}

/// Greedy completion of one token: (text, prompt tokens, seconds it took, which is its TTFT).
fn first_token(port: u16, prompt: &str) -> (String, u64, f64) {
    let body = serde_json::json!({
        "model": "SmolLM2-135M-Instruct", "prompt": prompt, "max_tokens": 4, "temperature": 0
    });
    let started = Instant::now();
    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body.to_string()));
    let took = started.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{text}");
    let v = json(&text);
    (v["choices"][0]["text"].as_str().unwrap().to_string(), v["usage"]["prompt_tokens"].as_u64().unwrap(), took)
}

fn start(dir: &Path, name: &str, host: bool, disk: bool) -> (Proc, u16) {
    let port = free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, topology(port, dir, host, disk)).unwrap();
    let p = Proc::spawn(&["serve", "--config", config.to_str().unwrap()], dir.join(format!("{name}.log")));
    assert!(wait_health(port, 200, Duration::from_secs(120)), "{name} did not start: {}", p.log_text());
    (p, port)
}

/// The blocks the router believes tier `source` holds.
fn tier_blocks(port: u16, source: &str) -> u64 {
    let status = json(&http("GET", port, "/debug/router", None).2);
    let workers = status["workers"].as_array().cloned().unwrap_or_default();
    workers.iter().find(|w| w["worker"] == source).map_or(0, |w| w["tier_blocks"].as_u64().unwrap())
}

/// Wait until the router's view of tier `source` holds at least `min` blocks and has stopped
/// changing (every evicted block offloaded, stored and published).
fn wait_settled(port: u16, source: &str, min: u64) -> u64 {
    let mut last = u64::MAX;
    let settled = wait_until(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = tier_blocks(port, source);
        let done = now >= min && now == last;
        last = now;
        done
    });
    assert!(settled, "tier {source} did not settle: {last} blocks");
    last
}

fn computed(port: u16) -> f64 {
    metric(port, "armature_tokens_computed_total")
}

#[test]
fn evicted_prompt_is_onboarded_from_the_host_tier() {
    let dir = temp_dir("tiers-host");
    let (p, port) = start(&dir, "host", true, false);
    let (a, b) = (long_prompt(1), long_prompt(2));
    let (reference, tokens, cold) = first_token(port, &a);
    assert!(tokens > 600, "{tokens}");
    // B does not fit beside A in the pool of 64 blocks: A's blocks are evicted, into the host tier.
    first_token(port, &b);
    let m = |name: &str| metric(port, name);
    wait_settled(port, "n0/host", 20);
    let before = computed(port);
    let (text, _, warm) = first_token(port, &a);
    assert_eq!(text, reference, "onboarded KV gives the same greedy output");
    let onboarded = m("armature_cache_onboarded_blocks_total{tier=\"host\"}");
    let status = http("GET", port, "/debug/router", None).2;
    assert_eq!(m("armature_cache_onboard_total{tier=\"host\",outcome=\"onboarded\"}"), 1.0, "{status}");
    assert!(onboarded >= 20.0, "{onboarded} blocks onboarded");
    assert!(m("armature_cache_hit_blocks_total{tier=\"host\"}") >= onboarded);
    assert!(m("armature_cache_bytes_out_total{tier=\"host\"}") > 0.0);
    assert!(m("armature_router_tier_hints_total{tier=\"host\"}") >= 1.0);
    // Only what no tier held was computed again.
    let recomputed = computed(port) - before;
    assert!(recomputed <= (tokens - onboarded as u64 * BLOCK + 4) as f64, "{recomputed} tokens computed");
    // The TTFT this saves is measured by `bench/tiers.py` (no timed assertions in tests).
    println!("TTFT of a {tokens}-token prompt: recomputed {cold:.3} s, onboarded from host {warm:.3} s");
    drop(p);
}

#[test]
fn disk_tier_survives_a_restart_and_refuses_corrupt_blocks() {
    let dir = temp_dir("tiers-disk");
    let (a, b) = (long_prompt(3), long_prompt(4));
    // No host tier: the pool evicts straight to disk.
    let (mut p, port) = start(&dir, "disk1", false, true);
    let (reference, tokens, _) = first_token(port, &a);
    // B evicts A's tail (a sequence's tail goes first), C the rest of A: all of A is on disk.
    first_token(port, &b);
    first_token(port, &long_prompt(7));
    // Every block the worker offloaded is written before the node goes down.
    wait_settled(port, "n0/disk", 20);
    let on_disk = metric(port, "armature_cache_blocks{tier=\"disk\"}");
    assert_eq!(on_disk, metric(port, "armature_cache_offloaded_blocks_total"));
    drop(p.child.kill());
    p.wait_exit(Duration::from_secs(10));

    // A new process rebuilds the disk tier's index and serves A's blocks from it.
    let (mut p, port) = start(&dir, "disk2", false, true);
    assert_eq!(metric(port, "armature_cache_blocks{tier=\"disk\"}"), on_disk);
    assert!(p.log_text().contains("disk tier rebuilt its index"));
    // The router hears of the tier's blocks.
    wait_settled(port, "n0/disk", on_disk as u64);
    let before = computed(port);
    let (text, _, _) = first_token(port, &a);
    assert_eq!(text, reference);
    let onboarded = metric(port, "armature_cache_onboarded_blocks_total{tier=\"disk\"}");
    assert!(onboarded >= 20.0, "{onboarded} blocks onboarded from disk");
    assert!(computed(port) - before <= (tokens - onboarded as u64 * BLOCK + 4) as f64);
    drop(p.child.kill());
    p.wait_exit(Duration::from_secs(10));

    // Corrupt every block file (one byte of each body): the first read is refused, the file
    // deleted, and the prompt recomputed with the same output.
    let files: Vec<_> = std::fs::read_dir(dir.join("disk")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.len() as f64 >= on_disk);
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5a;
        std::fs::write(f, bytes).unwrap();
    }
    let (p, port) = start(&dir, "disk3", false, true);
    wait_settled(port, "n0/disk", 20);
    let before = computed(port);
    let (text, _, _) = first_token(port, &a);
    assert_eq!(text, reference, "a corrupt block is never used");
    assert_eq!(metric(port, "armature_cache_corrupt_blocks_total{tier=\"disk\"}"), 1.0);
    assert_eq!(metric(port, "armature_cache_onboarded_blocks_total{tier=\"disk\"}"), 0.0);
    assert!(computed(port) - before >= (tokens - 1) as f64, "the prompt was recomputed");
    assert_eq!(std::fs::read_dir(dir.join("disk")).unwrap().count(), files.len() - 1, "the corrupt file is gone");
    drop(p);
}

/// Node `store` has a worker and a host tier; node `front` has the gateway and a worker that
/// starts as a prefill worker (so everything is served on `store` first). Once roles swap, the
/// prompt `store` evicted into its host tier is onboarded by `front` over the data plane.
/// (The host-tier test above onboards a prompt's tail behind the head the pool kept; these two
/// onboard whole prompts.)
#[test]
fn another_nodes_host_tier_serves_blocks_over_the_data_plane() {
    let dir = temp_dir("tiers-remote");
    let port = free_port();
    let certs = dir.join("certs");
    let config = dir.join("remote.toml");
    let text = format!(
        r#"[cluster]
name = "tiers-remote"
cookie = "change-me"
heartbeat_interval = "250ms"
lease_timeout = "2s"

[model]
source = "default"

[transport]
certs = {certs:?}

[[nodes]]
name = "store"
control = "127.0.0.1:{}"
data = "127.0.0.1:{}"
workers = [{{ device = "cpu", kv_blocks = 64 }}]

[nodes.cache]
host = "256MiB"

[[nodes]]
name = "front"
control = "127.0.0.1:{}"
data = "127.0.0.1:{}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", role = "prefill", kv_blocks = 64 }}]
"#,
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    std::fs::write(&config, text).unwrap();
    cert_init(&config);
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    let both = || {
        let (status, _, body) = http("GET", port, "/health", None);
        status == 200 && json(&body)["workers"].as_array().is_some_and(|w| w.len() == 2)
    };
    assert!(wait_until(Duration::from_secs(120), both), "cluster did not start: {}", launch.log_text());
    let router = || json(&http("GET", port, "/debug/router", None).2);
    let (a, b) = (long_prompt(5), long_prompt(6));
    let (reference, _, _) = first_token(port, &a);
    assert_eq!(router()["recent"][0]["worker"], "store/cpu");
    // B evicts A's tail into store's host tier, C its head.
    first_token(port, &b);
    first_token(port, &long_prompt(8));
    wait_settled(port, "store/host", 20);
    for (worker, role) in [("store/cpu", "prefill"), ("front/cpu", "aggregated")] {
        let body = format!(r#"{{"worker": "{worker}", "role": "{role}"}}"#);
        assert_eq!(http("POST", port, "/debug/role", Some(&body)).0, 200);
    }
    let swapped = || {
        let roles = router()["roles"].as_array().cloned().unwrap_or_default();
        let has = |w: &str, r: &str| roles.iter().any(|x| x[0] == w && x[1] == r);
        has("front/cpu", "aggregated") && has("store/cpu", "prefill")
    };
    assert!(wait_until(Duration::from_secs(10), swapped));
    let (text, _, _) = first_token(port, &a);
    let status = router();
    let last = status["recent"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["worker"], "front/cpu", "{status}");
    assert!(last["explanation"].as_str().unwrap().contains("credited"), "{last}");
    assert_eq!(text, reference, "KV from another node's tier gives the same greedy output");
    let m = |name: &str| metric(port, name);
    assert!(m("armature_router_tier_hints_total{tier=\"remote\"}") >= 1.0);
    assert_eq!(m("armature_cache_onboard_total{tier=\"remote\",outcome=\"onboarded\"}"), 1.0);
    assert!(m("armature_cache_onboarded_blocks_total{tier=\"remote\"}") >= 20.0);
    assert!(m("armature_transfer_frames_total{direction=\"in\"") >= 20.0);
    drop(launch);
}
