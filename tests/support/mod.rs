//! Helpers for end-to-end tests: real `armature` processes on loopback, a small HTTP client, and
//! a Python venv with the official `openai` client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_armature"))
}

/// A fresh directory under cargo's per-test temp folder.
pub fn temp_dir(name: &str) -> TempDir {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

/// A test's own directory, removed when dropped unless the test is failing (its logs and configs
/// stay for a look). Without this every CI run left gigabytes behind (a model export is 0.5 GB).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The model cache shared by every test (the default model is fetched into it once).
pub fn model_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("model-cache")
}

/// A port nothing listens on now (TCP or UDP), never the same twice in one test process.
///
/// It is drawn from below the kernel's ephemeral range (`ip_local_port_range`). A port the
/// kernel hands out for `:0` may be handed out again before the test's node binds it: a CI run
/// lost a launch to exactly that, when another node's loopback listener (bound to `:0`) took the
/// port the topology gave node `c`.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 { (10_000, ephemeral_low) } else { (ephemeral_low.max(1024), 60_000) };
    // A start that differs between the test processes that may run side by side.
    let mut port =
        low + ((std::process::id() as u64 * 7919 + given.len() as u64 * 104_729) % u64::from(high - low)) as u16;
    loop {
        port = if port + 1 >= high { low } else { port + 1 };
        if given.contains(&port) {
            continue;
        }
        let tcp = TcpListener::bind(("127.0.0.1", port)).is_ok();
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if tcp && udp {
            given.push(port);
            return port;
        }
    }
}

/// A child process, killed when dropped; its output goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    /// The directory its config and log are in, when the process owns it (removed after the kill).
    dir: Option<TempDir>,
}

impl Proc {
    pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file clone");
        let child = Command::new(bin())
            .args(args)
            .env("ARMATURE_CACHE_DIR", model_cache())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn armature");
        Proc::from_child(child, log)
    }

    /// A process started elsewhere whose output goes to `log`.
    pub fn from_child(child: Child, log: PathBuf) -> Proc {
        Proc { child, log, dir: None }
    }

    /// Keep `dir` until this process is killed.
    pub fn owning(mut self, dir: TempDir) -> Proc {
        self.dir = Some(dir);
        self
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// `armature serve` of the default topology, but with the test executor taking `step_delay` per
/// step, on a free port. Returns the process and the port.
pub fn serve_test_executor(name: &str, step_delay: &str) -> (Proc, u16) {
    let port = free_port();
    let dir = temp_dir(name);
    let config = dir.join("cluster.toml");
    let text = include_str!("../../cluster.toml")
        .replace("source = \"default\"", &format!("source = \"test\"\ntest = {{ step_delay = \"{step_delay}\" }}"));
    std::fs::write(&config, text).expect("write config");
    let args = ["serve", "--config", config.to_str().expect("utf-8 path"), "--http-port", &port.to_string()];
    (Proc::spawn(&args, dir.join("serve.log")).owning(dir), port)
}

/// Poll `f` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One HTTP/1.1 exchange with `Connection: close`. Returns (status, headers, body); status 0 when
/// the server cannot be reached.
pub fn http(method: &str, port: u16, path: &str, body: Option<&str>) -> (u16, String, String) {
    http_with(method, port, path, body, &[])
}

pub fn http_with(
    method: &str,
    port: u16,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).and_then(|_| s.write_all(body.as_bytes())).is_err() {
        return (0, String::new(), String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return (0, text, String::new());
    };
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, head.to_string(), body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Wait until `/health` answers `status`.
pub fn wait_health(port: u16, status: u16, timeout: Duration) -> bool {
    wait_until(timeout, || http("GET", port, "/health", None).0 == status)
}

/// The value of a Prometheus sample whose line starts with `prefix`, summed over matches.
pub fn metric(port: u16, prefix: &str) -> f64 {
    let (_, _, text) = http("GET", port, "/metrics", None);
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Packages the Python side of the tests needs.
const PY_PACKAGES: [&str; 9] = [
    "openai>=1.40",
    "anthropic>=0.40",
    "gguf==0.19.0",
    "numpy>=1.26",
    "sentencepiece==0.2.0",
    "transformers==4.57.1",
    "protobuf>=5",
    "jsonschema>=4",
    "prometheus_client>=0.20",
];

/// A Python interpreter with the packages above: `ARMATURE_TEST_PYTHON` if set, else a
/// venv under `target/` made on first use (`python3 -m venv`, `pip install`).
pub fn python_venv() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("ARMATURE_TEST_PYTHON") {
            return PathBuf::from(p);
        }
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-venv");
        let py = venv.join("bin/python");
        let ready = || {
            Command::new(&py)
                .args([
                    "-c",
                    "import openai, anthropic, gguf, numpy, sentencepiece, transformers, google.protobuf, jsonschema, prometheus_client",
                ])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ready() {
            let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success());
            assert!(ok, "python3 -m venv failed: install python3-venv");
            let ok = Command::new(&py)
                .args(["-m", "pip", "install", "--quiet"])
                .args(PY_PACKAGES)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "pip install {PY_PACKAGES:?} failed (needs PyPI)");
        }
        py
    })
    .clone()
}

/// Run the client script `tests/python/SCRIPT` with `args` and return the names of the checks it
/// passed (its last line); panics with its output if it failed.
pub fn python_checks(script: &str, args: &[&str]) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new(python_venv()).arg(path).args(args).output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python checks failed:\n{stdout}\n{stderr}");
    let summary = json(stdout.lines().last().unwrap_or(""));
    summary["passed"].as_array().expect("a summary").iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// Read a launch log until a line `[launch] started node NAME (pid N)` appears after `skip`
/// such lines; returns N.
pub fn started_pid(proc: &Proc, node: &str, skip: usize, timeout: Duration) -> Option<i32> {
    let needle = format!("[launch] started node {node} (pid ");
    let mut found = None;
    wait_until(timeout, || {
        let file = std::fs::File::open(&proc.log).ok();
        let pids: Vec<i32> = file
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| l.strip_prefix(&needle).and_then(|r| r.trim_end_matches(')').parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        found = pids.get(skip).copied();
        found.is_some()
    });
    found
}

/// `armature cert init --config CONFIG`, which must succeed.
pub fn cert_init(config: &Path) {
    let out = Command::new(bin()).args(["cert", "init", "--config"]).arg(config).output().expect("run armature");
    assert!(out.status.success(), "cert init: {}", String::from_utf8_lossy(&out.stderr));
}

/// A prompt of `blocks` blocks of 16 test-tokenizer tokens (one per byte), different per `seed`.
pub fn prompt(seed: usize, blocks: usize) -> String {
    let mut s = String::new();
    let mut i = seed;
    while s.len() < blocks * 16 {
        s.push((b'a' + (i % 26) as u8) as char);
        i = (i * 7 + 3) % 1009;
    }
    s
}

/// `armature serve` of the test model with a keys file of a user key and an admin key (ids
/// `user` and `ops`), a host tier and one CPU worker of 512 blocks, healthy: (the server, its
/// gateway port, its folder).
pub fn serve_with_keys(name: &str, user: &str, admin: &str) -> (Proc, u16, TempDir) {
    let port = free_port();
    let dir = temp_dir(name);
    let keys = dir.join("keys.toml");
    let admin = format!("[[keys]]\nid = \"ops\"\nkey = \"{admin}\"\nadmin = true\n");
    std::fs::write(&keys, format!("[[keys]]\nid = \"user\"\nkey = \"{user}\"\n\n{admin}")).unwrap();
    let config = format!(
        r#"
[cluster]
name = "{name}"
cookie = "c"

[model]
source = "test"

[gateway]
api_keys_file = {keys:?}

[[nodes]]
name = "n0"
control = "127.0.0.1:{control}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
cache = {{ host = "64MiB" }}
workers = [{{ device = "cpu", kv_blocks = 512 }}]
"#,
        control = free_port()
    );
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, config).unwrap();
    let serve = Proc::spawn(&["serve", "--config", config_path.to_str().unwrap()], dir.join("serve.log"));
    assert!(wait_health(port, 200, Duration::from_secs(30)), "not healthy: {}", serve.log_text());
    (serve, port, dir)
}

/// The last position's logits of `ids` in the f32 numpy forward pass of the GGUF at `model`
/// (`tests/python/numpy_forward.py`, llama.cpp's `gguf` package reading the file).
pub fn numpy_logits(model: &Path, ids: &[u32]) -> Vec<f32> {
    let out = Command::new(python_venv())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/numpy_forward.py"))
        .arg(model)
        .arg(serde_json::to_string(ids).expect("json"))
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("logits")
}

/// Greedy decoding after `prompt`, token by token (each step decodes the last token over the KV
/// of the earlier ones, in the blocks of `table`), against llama.cpp's greedy `theirs`: the tokens
/// agreed before the first difference, which must be a near-tie (llama.cpp's pick within
/// `max_gap` of our best logit).
pub fn greedy_agreement(
    exec: &mut dyn gpu::executor::Executor,
    prompt: &[u32],
    theirs: &[u32],
    table: &[gpu::pool::BlockId],
    max_gap: f32,
) -> Vec<u32> {
    let mut tokens = prompt.to_vec();
    for (i, &their) in theirs.iter().enumerate() {
        let start = if i == 0 { 0 } else { tokens.len() - 1 };
        let view = gpu::executor::SequenceView {
            tokens: &tokens,
            start,
            prompt_len: prompt.len(),
            blocks: table,
            wants_logits: true,
            all_logits: false,
        };
        let logits = exec.forward(&[view]).unwrap().remove(0).unwrap();
        let ours = gpu::sampling::argmax(&logits);
        if ours != their {
            let gap = logits[ours as usize] - logits[their as usize];
            assert!(gap < max_gap, "token {i}: we pick {ours}, llama.cpp {their}, {gap} apart");
            break;
        }
        tokens.push(ours);
    }
    tokens.split_off(prompt.len())
}

/// A reference's `[[id, logit], ...]` (llama.cpp's top logits).
pub fn top_logits(v: &serde_json::Value) -> Vec<(usize, f32)> {
    let pairs = v.as_array().expect("an array of pairs");
    pairs.iter().map(|p| (p[0].as_u64().expect("id") as usize, p[1].as_f64().expect("logit") as f32)).collect()
}

/// How far `logits` are from the reference's `top` ones after each side's mean over those ids is
/// removed (softmax does not see a shift).
pub fn centered_gap(logits: &[f32], top: &[(usize, f32)]) -> f32 {
    let ours_mean = top.iter().map(|&(id, _)| logits[id]).sum::<f32>() / top.len() as f32;
    let ref_mean = top.iter().map(|&(_, w)| w).sum::<f32>() / top.len() as f32;
    top.iter().map(|&(id, w)| ((logits[id] - ours_mean) - (w - ref_mean)).abs()).fold(0.0f32, f32::max)
}
