//! The Grafana dashboard (`deploy/grafana/armature.json`) against a running `armature serve`:
//! every metric its queries name is exported, every family has `# HELP` and `# TYPE` (checked with
//! the Prometheus client's own parser, `tests/python/metrics_check.py`), and every catalogued
//! family exists from the start, at zero, before any request.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

fn config(port: u16) -> String {
    format!(
        r#"
[cluster]
name = "grafana"
cookie = "c"

[model]
source = "test"

[[nodes]]
name = "n0"
control = "127.0.0.1:{control}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
cache = {{ host = "64MiB" }}
workers = [{{ device = "cpu" }}]
"#,
        control = free_port()
    )
}

/// The families a scrape declares (`# TYPE` lines).
fn families(scrape: &str) -> BTreeSet<String> {
    scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(str::to_string)).collect()
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_every_family_exists_from_the_start() {
    let port = free_port();
    let dir = temp_dir("grafana");
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, config(port)).unwrap();
    let serve = Proc::spawn(&["serve", "--config", config_path.to_str().unwrap()], dir.join("serve.log"));
    assert!(wait_health(port, 200, Duration::from_secs(30)), "not healthy: {}", serve.log_text());

    // Before any request: every catalogued family but the one labelled by each request's route
    // and status.
    let (_, _, start) = http("GET", port, "/metrics", None);
    let missing: Vec<&str> = runtime::catalogue::FAMILIES
        .iter()
        .map(|f| f.name)
        .filter(|n| !families(&start).contains(*n) && *n != "armature_http_requests_total")
        .collect();
    assert!(missing.is_empty(), "not exported at start: {missing:?}");
    assert!(start.contains("armature_disagg_requests_total{outcome=\"fallback\"} 0"), "zero-valued series");
    assert!(start.contains("armature_cache_hit_blocks_total{tier=\"host\"} 0"));

    let body = r#"{"model":"armature-test","prompt":"hello there","max_tokens":4}"#;
    for _ in 0..2 {
        assert_eq!(http("POST", port, "/v1/completions", Some(body)).0, 200);
    }
    let (_, _, scrape) = http("GET", port, "/metrics", None);
    let file = dir.join("scrape.txt");
    std::fs::write(&file, &scrape).unwrap();
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/armature.json");
    let passed = python_checks("metrics_check.py", &[file.to_str().unwrap(), dashboard.to_str().unwrap()]);
    assert_eq!(passed, ["every family has HELP and TYPE", "every metric the dashboard queries is exported"]);
}
