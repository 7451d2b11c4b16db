//! Bad configuration: one line on stderr that names the field, and exit code 2.

mod support;

use std::process::Command;

use support::*;

const GOOD: &str = include_str!("../examples/two-nodes.toml");

/// Run `armature ARGS` and return (exit code, stderr lines).
fn run(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let out = Command::new(bin()).args(args).env("RUST_LOG", "error").output().expect("run armature");
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), stderr.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
}

fn check(name: &str, text: &str, field: &str, also: &str) {
    let dir = temp_dir(&format!("badcfg-{name}"));
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    for args in
        [vec!["serve", "--config", p], vec!["node", "--name", "n0", "--config", p], vec!["launch", "--config", p]]
    {
        let (code, lines) = run(&args);
        assert_eq!(code, Some(2), "{name} {args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{name} {args:?}: want one line, got {lines:?}");
        assert!(lines[0].starts_with("error: "), "{lines:?}");
        assert!(lines[0].contains(field), "{name}: {:?} does not name {field}", lines[0]);
        assert!(lines[0].contains(also), "{name}: {:?} does not say {also}", lines[0]);
    }
}

#[test]
fn unknown_key() {
    check(
        "unknown",
        &GOOD.replace("kv_blocks = 2048", "kv_blocks = 2048, gpus = 8"),
        "nodes[1].workers[0].gpus",
        "unknown field `gpus`",
    );
}

#[test]
fn wrong_type() {
    check(
        "type",
        &GOOD.replace("kv_blocks = 2048", "kv_blocks = \"plenty\""),
        "nodes[1].workers[0].kv_blocks",
        "\"plenty\"",
    );
}

#[test]
fn duplicate_node_name() {
    check("dup", &GOOD.replace("name = \"n1\"", "name = \"n0\""), "nodes[1].name", "duplicate node name \"n0\"");
}

#[test]
fn bad_duration_unit() {
    check(
        "unit",
        &GOOD.replace("lease_timeout = \"2s\"", "lease_timeout = \"2 weeks\""),
        "cluster.lease_timeout",
        "weeks",
    );
}

/// The two-node example on free ports, with `join_timeout`. Returns (text, n0's and n1's control ports).
fn on_free_ports(join_timeout: &str) -> (String, u16, u16) {
    let (c0, c1, g) = (free_port(), free_port(), free_port());
    let text = GOOD
        .replace("127.0.0.1:7410", &format!("127.0.0.1:{c0}"))
        .replace("127.0.0.1:7411", &format!("127.0.0.1:{c1}"))
        .replace("127.0.0.1:8010", &format!("127.0.0.1:{g}"))
        .replace("lease_timeout = \"2s\"", &format!("lease_timeout = \"2s\"\njoin_timeout = \"{join_timeout}\""));
    (text, c0, c1)
}

#[test]
fn unreachable_seed() {
    // n0's only seed is n1's control address, where nothing listens.
    let (text, _, c1) = on_free_ports("1s");
    let dir = temp_dir("badcfg-seed");
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    let (code, lines) = run(&["node", "--name", "n0", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("nodes[1].control"), "{lines:?}");
    assert!(lines[0].contains(&format!("cannot join seed 127.0.0.1:{c1} within 1s: unreachable")), "{lines:?}");
}

#[test]
fn unknown_node_name() {
    let dir = temp_dir("badcfg-name");
    let path = dir.join("cluster.toml");
    std::fs::write(&path, GOOD).unwrap();
    let (code, lines) = run(&["node", "--name", "n9", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert_eq!(lines, ["error: --name: no node \"n9\" in the topology (nodes: n0, n1)"]);
}

#[test]
fn missing_file() {
    let (code, lines) = run(&["serve", "--config", "/nonexistent/cluster.toml"]);
    assert_eq!(code, Some(2));
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("cannot read"), "{lines:?}");
}

#[test]
fn wrong_cookie_is_refused() {
    // Long enough that n0 (which waits for n1 in turn) is still up when a slow-starting n1 dials.
    let (text, c0, _) = on_free_ports("10s");
    let dir = temp_dir("badcfg-cookie");
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let _n0 = Proc::spawn(&["node", "--name", "n0", "--config", p], dir.join("n0.log"));
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", c0)).is_ok()
    }));
    let out = Command::new(bin())
        .args(["node", "--name", "n1", "--config", p])
        .env("RUST_LOG", "error")
        .env("ARMATURE_COOKIE", "not-the-cluster-cookie")
        .output()
        .expect("run armature");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("nodes[0].control") && lines[0].contains("refused our cookie"), "{lines:?}");
}

/// A one-node topology on free ports serving `model` on a CPU worker.
fn serving(model: &std::path::Path) -> String {
    let (c, g) = (free_port(), free_port());
    format!(
        "[cluster]\nname = \"m\"\ncookie = \"m\"\n\n[model]\nsource = \"{}\"\n\n[[nodes]]\nname = \"n0\"\n\
         control = \"127.0.0.1:{c}\"\ngateway = \"127.0.0.1:{g}\"\nroles = [\"gateway\", \"router\"]\n\
         workers = [{{ device = \"cpu\" }}]\n",
        model.display()
    )
}

#[test]
fn a_model_of_an_architecture_we_do_not_run() {
    use gpu::model::gguf::GgufValue;
    let dir = temp_dir("badcfg-arch");
    // A GGUF as llama.cpp writes a Mamba model, as far as the loader reads before it refuses.
    let gguf = dir.join("mamba.gguf");
    let mut w = gpu::model::gguf_write::GgufWriter::default();
    w.meta("general.architecture", GgufValue::String("mamba".into()))
        .meta("mamba.block_count", GgufValue::U32(1))
        .tensor("token_embd.weight", &[8, 4], vec![0.0; 32]);
    w.write(&gguf).unwrap();
    check("arch-gguf", &serving(&gguf), &gguf.display().to_string(), "general.architecture \"mamba\"");
    // A Hugging Face folder of another family.
    let folder = dir.join("mamba-hf");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("config.json"),
        r#"{"architectures": ["MambaForCausalLM"], "hidden_size": 8, "num_attention_heads": 2,
            "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 4, "rms_norm_eps": 1e-6}"#,
    )
    .unwrap();
    check(
        "arch-hf",
        &serving(&folder),
        &folder.display().to_string(),
        "config.json: architectures \"MambaForCausalLM\"",
    );
}
