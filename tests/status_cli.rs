//! `armature status` against a running `armature serve` with keys: with the admin key it shows
//! the worker, its role, KV pool use and queue, the cache tier, the recent placements and the
//! requests served with their TTFT; without it, the workers from `/health` and what is missing.

mod support;

use std::process::Command;

use support::*;

const USER: &str = "sk-user-0123456789abcdef";
const ADMIN: &str = "sk-admin-0123456789abcdef";

fn status(port: u16, key: Option<&str>) -> String {
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(bin());
    cmd.args(["status", "--url", &url]).env_remove("ARMATURE_API_KEY");
    if let Some(key) = key {
        cmd.args(["--key", key]);
    }
    let out = cmd.output().expect("run armature status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_shows_the_cluster_from_its_gateway() {
    let (_serve, port, _dir) = serve_with_keys("status-cli", USER, ADMIN);
    let body = r#"{"model":"armature-test","prompt":"a prompt that fills a few blocks of the pool","max_tokens":4}"#;
    let auth = format!("Bearer {USER}");
    for _ in 0..3 {
        let (code, _, text) = http_with("POST", port, "/v1/completions", Some(body), &[("Authorization", &auth)]);
        assert_eq!(code, 200, "{text}");
    }

    let out = status(port, Some(ADMIN));
    println!("{out}");
    assert!(out.contains("cluster: ok; dead nodes: none"), "{out}");
    let row = out.lines().find(|l| l.starts_with("n0/cpu")).unwrap_or_else(|| panic!("no worker row: {out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "aggregated", "{row}");
    assert!(cells[2].ends_with("/512"), "KV in use of the 512-block pool: {row}");
    assert!(row.ends_with("  live") && !row.contains("not live"), "{row}");
    assert!(out.lines().any(|l| l.starts_with("n0/host")), "the host tier: {out}");
    assert!(out.contains("REQUEST") && out.contains("CANDIDATES"), "recent placements: {out}");
    let placed = out.lines().filter(|l| l.contains("prompt of ") && l.contains("* n0/cpu: score")).count();
    assert_eq!(placed, 3, "each placement on one line, with its candidate: {out}");
    assert!(out.contains("since start: 3 requests"), "{out}");
    let ttft = out.lines().find(|l| l.starts_with("TTFT p50 ")).unwrap();
    assert!(!ttft.starts_with("TTFT p50 -"), "a TTFT from the requests: {ttft}");

    // Without the admin key: the workers from /health, and why the rest is missing.
    let out = status(port, None);
    assert!(out.contains("needs the admin key"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("n0/cpu") && l.ends_with("live")), "{out}");
}
