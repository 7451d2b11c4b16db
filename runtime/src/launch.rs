//! `armature launch`: every node of a topology as a child process on this machine, with each
//! node's log lines prefixed by its name, restarts with backoff, and a clean stop on a signal. A
//! node that exits with the configuration-error code is not restarted: launch stops every node
//! and reports it, since starting it again would fail the same way.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::supervision::{RestartDecision, RestartPolicy, RestartTracker};

/// What to launch.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// The `armature` binary.
    pub exe: PathBuf,
    pub config: PathBuf,
    pub nodes: Vec<String>,
    pub restart: RestartPolicy,
    /// How long a node may take to stop after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// The exit code by which a node says its configuration is wrong (never restarted).
    pub config_exit_code: i32,
}

/// How a launch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaunchEnd {
    /// Stopped on a signal.
    Stopped,
    /// Node `node` exited with the configuration-error code.
    ConfigError { node: String },
}

/// Run until `shutdown` turns true, or a node reports a configuration error, then stop every node.
pub async fn run(spec: LaunchSpec, mut shutdown: watch::Receiver<bool>) -> LaunchEnd {
    let (halt_tx, halt) = watch::channel(false);
    let halt_tx = std::sync::Arc::new(halt_tx);
    let forward = {
        let halt_tx = halt_tx.clone();
        tokio::spawn(async move {
            stopping(&mut shutdown).await;
            let _ = halt_tx.send(true);
        })
    };
    let tasks: Vec<_> = spec
        .nodes
        .iter()
        .map(|name| tokio::spawn(keep_node_running(spec.clone(), name.clone(), halt.clone(), halt_tx.clone())))
        .collect();
    let mut end = LaunchEnd::Stopped;
    for t in tasks {
        if let Ok(Some(node)) = t.await
            && end == LaunchEnd::Stopped
        {
            end = LaunchEnd::ConfigError { node };
        }
    }
    forward.abort();
    println!("[launch] all nodes stopped");
    end
}

/// Keep node `name` running until `shutdown`; returns its name if it exited with the
/// configuration-error code (after asking every other node to stop through `halt`).
async fn keep_node_running(
    spec: LaunchSpec,
    name: String,
    mut shutdown: watch::Receiver<bool>,
    halt: std::sync::Arc<watch::Sender<bool>>,
) -> Option<String> {
    let mut tracker = RestartTracker::new(spec.restart);
    let epoch = Instant::now();
    loop {
        if *shutdown.borrow() {
            return None;
        }
        let mut child = match spawn_node(&spec, &name) {
            Ok(c) => c,
            Err(e) => {
                println!("[launch] cannot start node {name}: {e}");
                return None;
            }
        };
        // `Child::wait` closes a stdin it still holds; keep ours open so the node keeps running
        // (it exits when this pipe closes, that is when launch itself goes away).
        let _stdin = child.stdin.take();
        let pid = child.id().unwrap_or(0);
        println!("[launch] started node {name} (pid {pid})");
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stopping(&mut shutdown) => {
                stop_child(&mut child, pid, &name, spec.stop_timeout).await;
                return None;
            }
        };
        if status.as_ref().ok().and_then(|s| s.code()) == Some(spec.config_exit_code) {
            println!(
                "[launch] node {name} (pid {pid}) exited with a configuration error (code {}); not restarting it, stopping every node",
                spec.config_exit_code
            );
            let _ = halt.send(true);
            return Some(name);
        }
        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        let after = match tracker.on_failure(&name, epoch.elapsed()) {
            RestartDecision::Restart { after, .. } => after,
            RestartDecision::Escalate { .. } => spec.restart.backoff_max,
        };
        println!("[launch] node {name} (pid {pid}) exited: {status}; restarting in {after:?}");
        tokio::select! {
            _ = tokio::time::sleep(after) => {}
            _ = stopping(&mut shutdown) => return None,
        }
    }
}

fn spawn_node(spec: &LaunchSpec, name: &str) -> std::io::Result<Child> {
    let mut child = Command::new(&spec.exe)
        .arg("node")
        .arg("--name")
        .arg(name)
        .arg("--config")
        .arg(&spec.config)
        .arg("--exit-on-stdin-close")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(prefix_lines(out, name.to_string(), false));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(prefix_lines(err, name.to_string(), true));
    }
    Ok(child)
}

async fn prefix_lines(stream: impl AsyncRead + Unpin, name: String, to_stderr: bool) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if to_stderr {
            eprintln!("[{name}] {line}");
        } else {
            println!("[{name}] {line}");
        }
    }
}

async fn stop_child(child: &mut Child, pid: u32, name: &str, timeout: Duration) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => println!(
            "[launch] node {name} stopped: {}",
            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
        ),
        Err(_) => {
            println!("[launch] node {name} did not stop within {timeout:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
