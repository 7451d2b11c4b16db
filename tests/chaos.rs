//! Chaos under load: three nodes (gateway and router; a worker on the host; a worker inside its
//! own network namespace, joined by a veth pair), the deterministic test executor (50 ms a step),
//! four clients streaming greedy completions of six prompts in a loop. Meanwhile: the host worker
//! is SIGKILLed (and started again), the namespaced worker is SIGSTOPped past its lease (then
//! continued), and then cut off with iptables (every packet dropped inside its namespace) past
//! its lease, and healed. Every stream must equal its prompt's uninterrupted output (no token
//! repeated or missing) or end with a clean retriable error; the partitioned node must rejoin and
//! its stale work must not reach any client.
//!
//! Needs root, `ip` (iproute2) and `iptables`; `.ci/run` installs them and sets
//! `ARMATURE_CHAOS_REQUIRED=1`, which turns a missing one into a failure instead of a skip.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const MAX_TOKENS: u64 = 30;
const PROMPTS: [&str; 6] = [
    "Here is a long story about a lighthouse keeper and the ships she saw:",
    "List the rivers of Europe from the longest:",
    "Write a letter to a friend about the mountains:",
    "Explain how a clock works to a child:",
    "The recipe for bread starts with",
    "A short history of the printing press:",
];

fn body(prompt: &str) -> String {
    serde_json::json!({
        "model": "armature-test", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
        "ignore_eos": true, "stream": true, "stream_options": { "include_usage": true }
    })
    .to_string()
}

/// What one streamed completion gave: its text and completion tokens, or the error it ended with.
type Outcome = Result<(String, u64), String>;

fn parse_stream(status: u16, sse: &str) -> Outcome {
    if status != 200 {
        return Err(format!("status {status}: {sse}"));
    }
    let (mut text, mut completion) = (String::new(), 0);
    for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            return Ok((text, completion));
        }
        let v = json(line);
        if let Some(e) = v.get("error") {
            return Err(format!("error event: {e}"));
        }
        if let Some(t) = v["choices"][0]["text"].as_str() {
            text.push_str(t);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            completion = n;
        }
    }
    Err(format!("no [DONE]: {sse}"))
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A network namespace joined to the host by a veth pair: host side `.1`, namespace side `.2`.
struct Namespace {
    name: String,
    host_veth: String,
    host_ip: String,
    inner_ip: String,
}

impl Namespace {
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 60000;
        let (name, host_veth, inner_veth) = (format!("armchaos{id}"), format!("ach{id}"), format!("acn{id}"));
        let net = format!("10.{}.{}", 200 + id % 50, id % 250);
        let (host_ip, inner_ip) = (format!("{net}.1"), format!("{net}.2"));
        let ns = Self {
            name: name.clone(),
            host_veth: host_veth.clone(),
            host_ip: host_ip.clone(),
            inner_ip: inner_ip.clone(),
        };
        let steps = [
            format!("ip netns add {name}"),
            format!("ip link add {host_veth} type veth peer name {inner_veth}"),
            format!("ip link set {inner_veth} netns {name}"),
            format!("ip addr add {host_ip}/24 dev {host_veth}"),
            format!("ip link set {host_veth} up"),
            format!("ip netns exec {name} ip addr add {inner_ip}/24 dev {inner_veth}"),
            format!("ip netns exec {name} ip link set {inner_veth} up"),
            format!("ip netns exec {name} ip link set lo up"),
        ];
        for step in &steps {
            let words: Vec<&str> = step.split_whitespace().collect();
            if !run(words[0], &words[1..]) {
                return Err(format!("`{step}` failed"));
            }
        }
        Ok(ns)
    }

    /// Drop every packet in and out of the namespace (true), or stop dropping (false).
    fn cut(&self, on: bool) {
        let ok = if on {
            run("ip", &["netns", "exec", &self.name, "iptables", "-A", "INPUT", "-j", "DROP"])
                && run("ip", &["netns", "exec", &self.name, "iptables", "-A", "OUTPUT", "-j", "DROP"])
        } else {
            run("ip", &["netns", "exec", &self.name, "iptables", "-F"])
        };
        assert!(ok, "iptables in {}", self.name);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        run("ip", &["netns", "del", &self.name]);
        run("ip", &["link", "del", &self.host_veth]);
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing_tools() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.ok().as_deref() != Some("0") {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables"] {
        if !run("sh", &["-c", &format!("command -v {tool}")]) {
            return Some(format!("no `{tool}`"));
        }
    }
    None
}

fn workers_up(port: u16) -> usize {
    let (status, _, body) = http("GET", port, "/health", None);
    if status != 200 {
        return 0;
    }
    json(&body)["workers"].as_array().map_or(0, Vec::len)
}

fn spawn_node(config: &str, name: &str, netns: Option<&str>, log: std::path::PathBuf) -> Proc {
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    let child = cmd.args(["node", "--name", name, "--config", config]).stdout(out).stderr(err).spawn().unwrap();
    Proc::from_child(child, log)
}

#[test]
fn streams_survive_kills_stops_and_a_partition_under_load() {
    if let Some(why) = missing_tools() {
        assert!(std::env::var_os("ARMATURE_CHAOS_REQUIRED").is_none(), "ARMATURE_CHAOS_REQUIRED is set, but {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let ns = Namespace::create().expect("network namespace");
    let dir = temp_dir("chaos");
    let port = free_port();
    let config = dir.join("cluster.toml");
    let text = format!(
        r#"[cluster]
name = "chaos"
cookie = "change-me"
heartbeat_interval = "250ms"
lease_timeout = "2s"

[model]
source = "test"
test = {{ step_delay = "50ms" }}

[gateway]
migrations = 3

[[nodes]]
name = "gw"
control = "{host}:{}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]

[[nodes]]
name = "w1"
control = "{host}:{}"
workers = [{{ device = "cpu" }}]

[[nodes]]
name = "w2"
control = "{inner}:{}"
workers = [{{ device = "cpu" }}]
"#,
        free_port(),
        free_port(),
        free_port(),
        host = ns.host_ip,
        inner = ns.inner_ip,
    );
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap().to_string();
    let _gw = spawn_node(&config, "gw", None, dir.join("gw.log"));
    let mut w1 = spawn_node(&config, "w1", None, dir.join("w1.log"));
    let w2 = spawn_node(&config, "w2", Some(&ns.name), dir.join("w2.log"));
    let logs = || {
        ["gw", "w1", "w2", "w1-again"]
            .iter()
            .map(|n| format!("--- {n}\n{}", std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(wait_until(Duration::from_secs(120), || workers_up(port) == 2), "cluster did not start:\n{}", logs());

    // Each prompt's uninterrupted output.
    let reference: Vec<String> = PROMPTS
        .iter()
        .map(|p| {
            let (status, _, sse) = http("POST", port, "/v1/completions", Some(&body(p)));
            let (text, n) = parse_stream(status, &sse).unwrap();
            assert_eq!(n, MAX_TOKENS);
            text
        })
        .collect();

    // Four clients in a loop, each request recorded with its outcome.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut results = Vec::new();
                let mut k = c;
                while !stop.load(Ordering::Relaxed) {
                    let p = k % PROMPTS.len();
                    let (status, _, sse) = http("POST", port, "/v1/completions", Some(&body(PROMPTS[p])));
                    results.push((p, parse_stream(status, &sse)));
                    k += 1;
                }
                results
            })
        })
        .collect();
    let settle = |what: &str| {
        assert!(
            wait_until(Duration::from_secs(60), || workers_up(port) == 2),
            "both workers were not back after {what}:\n{}",
            logs()
        );
    };
    std::thread::sleep(Duration::from_secs(2));
    let moved = || metric(port, "armature_request_migrations_total");
    let mut phases = Vec::new();
    // 1. The host worker's node is killed, and started again.
    kill(Pid::from_raw(w1.pid()), Signal::SIGKILL).unwrap();
    let _ = w1.child.wait();
    std::thread::sleep(Duration::from_secs(2));
    let _w1 = spawn_node(&config, "w1", None, dir.join("w1-again.log"));
    settle("the kill");
    phases.push(("kill", moved()));
    std::thread::sleep(Duration::from_secs(1));
    // 2. The namespaced worker's node is stopped past its lease, then continued.
    kill(Pid::from_raw(w2.pid()), Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    kill(Pid::from_raw(w2.pid()), Signal::SIGCONT).unwrap();
    settle("the stop");
    phases.push(("stop", moved()));
    std::thread::sleep(Duration::from_secs(1));
    // 3. It is cut off past its lease, then healed: it must rejoin.
    ns.cut(true);
    std::thread::sleep(Duration::from_secs(4));
    ns.cut(false);
    settle("the partition");
    phases.push(("partition", moved()));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(usize, Outcome)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();

    let migrations = metric(port, "armature_request_migrations_total");
    let (mut completed, mut failed) = (0, Vec::new());
    for (p, r) in &results {
        match r {
            Ok((text, n)) => {
                assert_eq!(text, &reference[*p], "prompt {p}: a stream differs from its uninterrupted output");
                assert_eq!(*n, MAX_TOKENS, "prompt {p}: usage");
                completed += 1;
            }
            Err(e) => failed.push(e.clone()),
        }
    }
    println!(
        "chaos: {} requests, {completed} completed, {} failed, {migrations} migrations (cumulative after each fault: {phases:?})",
        results.len(),
        failed.len()
    );
    for e in &failed {
        // A clean, retriable error: the gateway's 503 (or 429) or an error event, never a broken
        // connection or a wrong answer.
        assert!(e.starts_with("status 503") || e.starts_with("status 429") || e.starts_with("error event"), "{e}");
    }
    assert!(results.len() >= 20, "the load ran ({} requests)", results.len());
    assert!(migrations >= 2.0, "the faults moved streams ({migrations} migrations)\n{}", logs());
    assert!(failed.len() * 10 <= results.len(), "{} of {} failed: {failed:?}", failed.len(), results.len());
}
