//! `armature launch` refuses a bad topology before it starts anything (exit code 2, one line):
//! a missing certificate, naming both ways out; a busy port; a missing model file. `--dev-certs` makes certificates for
//! a loopback topology and the cluster serves. A node that exits with code 2 is not restarted.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

fn topology(certs: Option<&Path>, extra: &str) -> (String, u16) {
    let gateway = free_port();
    let certs = certs.map(|d| format!("[transport]\ncerts = {:?}\n", d.to_str().unwrap())).unwrap_or_default();
    let text = format!(
        r#"[cluster]
name = "checks"
cookie = "a-cookie-for-the-tests"
{extra}

[model]
source = "test"

{certs}
[[nodes]]
name = "n0"
control = "127.0.0.1:{}"
gateway = "127.0.0.1:{gateway}"
roles = ["gateway", "router"]

[[nodes]]
name = "n1"
control = "127.0.0.1:{}"
workers = [{{ device = "cpu" }}]
"#,
        free_port(),
        free_port()
    );
    (text, gateway)
}

fn launch(dir: &Path, text: &str, args: &[&str]) -> Proc {
    let config = dir.join(format!("cluster-{}.toml", free_port()));
    std::fs::write(&config, text).unwrap();
    let mut all = vec!["launch", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    Proc::spawn(&all, dir.join(format!("launch-{}.log", free_port())))
}

#[test]
fn bad_topologies_are_refused_before_anything_starts() {
    let dir = temp_dir("launch-checks");
    // Certificates configured but never made.
    let (text, _) = topology(Some(&dir.join("no-certs")), "");
    let mut p = launch(&dir, &text, &[]);
    let status = p.wait_exit(Duration::from_secs(20)).expect("launch did not stop");
    assert_eq!(status.code(), Some(2));
    let log = p.log_text();
    assert!(!log.contains("started node"), "{log}");
    let error: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{log}");
    assert!(error[0].contains("armature cert init --config") && error[0].contains("--dev-certs"), "{log}");
    assert!(error[0].contains("no-certs/ca.pem"), "{log}");

    // A gateway port something else holds.
    let (text, gateway) = topology(None, "");
    let _holder = std::net::TcpListener::bind(("127.0.0.1", gateway)).unwrap();
    let mut p = launch(&dir, &text, &[]);
    assert_eq!(p.wait_exit(Duration::from_secs(20)).expect("launch did not stop").code(), Some(2));
    let log = p.log_text();
    assert!(log.contains("error: nodes[0].gateway: 127.0.0.1:") && log.contains("cannot be bound"), "{log}");
    assert!(!log.contains("started node"), "{log}");

    // A model file that is not there; and a gateway port the kernel handed out for `:0`, so in
    // its ephemeral range, which is warned about.
    let (text, gateway) = topology(None, "");
    let ephemeral = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = text
        .replace("source = \"test\"", "source = \"/nonexistent/model.gguf\"")
        .replace(&format!(":{gateway}\""), &format!(":{ephemeral}\""));
    let mut p = launch(&dir, &text, &[]);
    assert_eq!(p.wait_exit(Duration::from_secs(20)).expect("launch did not stop").code(), Some(2));
    let log = p.log_text();
    let warning = format!("warning: nodes[0].gateway: port {ephemeral} is in this host's ephemeral range");
    assert!(log.contains(&warning), "{log}");
    assert!(!log.contains("warning: nodes[1]"), "{log}");
    assert!(log.contains("error: model.source: /nonexistent/model.gguf does not exist"), "{log}");
    assert!(!log.contains("started node"), "{log}");
}

#[test]
fn dev_certs_make_a_loopback_cluster_that_serves_over_tls() {
    let dir = temp_dir("launch-dev-certs");
    let certs = dir.join("certs");
    let (text, gateway) = topology(Some(&certs), "");
    let p = launch(&dir, &text, &["--dev-certs"]);
    let up = wait_until(Duration::from_secs(60), || {
        let (status, _, body) = http("GET", gateway, "/health", None);
        status == 200 && json(&body)["workers"] == serde_json::json!(["n1/cpu"])
    });
    assert!(up, "{}", p.log_text());
    let log = p.log_text();
    assert!(log.contains("created a development CA"), "{log}");
    assert!(!log.contains("not encrypted"), "the control plane runs TLS: {log}");
    for key in [certs.join("n0.key"), certs.join("n1.key"), dir.join("certs.ca.key")] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    assert!(!certs.join("ca.key").exists());
    let body = r#"{"model":"armature-test","prompt":"hello","max_tokens":3}"#;
    let (status, _, text) = http("POST", gateway, "/v1/completions", Some(body));
    assert_eq!(status, 200, "{text}");
}

#[test]
fn a_node_that_exits_with_a_configuration_error_is_not_restarted() {
    let dir = temp_dir("launch-config-exit");
    // Every node joins through a seed nothing answers at: each exits 2 after the join timeout.
    let seed = format!("seeds = [\"127.0.0.1:{}\"]\njoin_timeout = \"1s\"", free_port());
    let (text, _) = topology(None, &seed);
    let mut p = launch(&dir, &text, &[]);
    let status = p.wait_exit(Duration::from_secs(30)).expect("launch kept running");
    assert_eq!(status.code(), Some(2));
    let log = p.log_text();
    assert!(log.contains("exited with a configuration error (code 2); not restarting it"), "{log}");
    assert!(log.contains("cannot join seed"), "{log}");
    assert!(!log.contains("restarting in"), "{log}");
    for node in ["n0", "n1"] {
        assert!(log.matches(&format!("started node {node} ")).count() <= 1, "{log}");
    }
}
