//! Disaggregation between two workers of one process whose KV pools reach each other: the
//! prefill worker's engine copies the prompt's blocks straight into the decode worker's reserved
//! blocks (`transport.device_copies`), and no frame is built. With the test executor on `cuda:0`
//! and `cuda:1` (it stands in for any device, in any build), whose pools stand in for two CUDA
//! devices with peer access (and whose stand-in KV checks at every step that
//! a sequence's blocks hold its own tokens); the same topology with `device_copies = false` sends
//! frames, and answers the same.

mod support;

use std::time::Duration;

use support::*;

fn topology(gateway: u16, certs: &std::path::Path, device_copies: bool) -> String {
    let p = || format!("127.0.0.1:{}", free_port());
    format!(
        r#"
[cluster]
name = "disagg-device"
cookie = "device"

[model]
source = "test"
test = {{ step_delay = "5ms" }}

[router]
disagg_min_blocks = 2

[transport]
certs = {certs:?}
device_copies = {device_copies}

[[nodes]]
name = "solo"
control = "{}"
data = "{}"
gateway = "127.0.0.1:{gateway}"
roles = ["gateway", "router"]
workers = [
  {{ device = "cuda:0", role = "prefill", max_batch_tokens = 32 }},
  {{ device = "cuda:1", role = "decode" }},
]
"#,
        p(),
        p(),
    )
}

fn complete(port: u16, prompt: &str) -> String {
    let body = serde_json::json!({ "model": "armature-test", "prompt": prompt, "max_tokens": 8, "temperature": 0 });
    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    json(&text)["choices"][0]["text"].as_str().unwrap().to_string()
}

/// What one run of the topology moved: (text, blocks transferred, bytes copied device to device
/// (in, out), frames received).
fn run(device_copies: bool, prompt: &str) -> (String, f64, f64, f64, f64) {
    let port = free_port();
    let dir = temp_dir("disagg-device");
    let config = dir.join("cluster.toml");
    std::fs::write(&config, topology(port, &dir.join("certs"), device_copies)).unwrap();
    cert_init(&config);
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    let both = || {
        let (status, _, body) = http("GET", port, "/health", None);
        status == 200 && json(&body)["workers"].as_array().is_some_and(|w| w.len() == 2)
    };
    assert!(wait_until(Duration::from_secs(60), both), "cluster did not start: {}", launch.log_text());
    let text = complete(port, prompt);
    let m = |name: &str| metric(port, name);
    assert_eq!(m("armature_disagg_requests_total{outcome=\"transferred\"}"), 1.0, "{}", launch.log_text());
    (
        text,
        m("armature_kv_transfer_blocks_total"),
        m("armature_transfer_bytes_total{direction=\"in\",path=\"device\"}"),
        m("armature_transfer_bytes_total{direction=\"out\",path=\"device\"}"),
        m("armature_transfer_frames_total{direction=\"in\""),
    )
}

#[test]
fn blocks_between_workers_of_one_process_are_copied_device_to_device() {
    let long = prompt(7, 12);
    let (text, blocks, copied_in, copied_out, frames) = run(true, &long);
    println!("device copies: {blocks} blocks, {copied_in} bytes in, {copied_out} out, {frames} frames: {text:?}");
    // The prompt's reusable blocks, all of them, and each block of the test layout is 128 bytes
    // (K and V of 16 positions, one layer, one 4-byte value each).
    assert!(blocks >= 10.0, "{blocks} blocks");
    assert_eq!(copied_in, blocks * 128.0);
    assert_eq!(copied_out, copied_in);
    assert_eq!(frames, 0.0, "no frame was sent");

    // Device copies off: the same blocks go as frames (the in-process hand-off), and the answer is
    // the same.
    let (framed_text, framed_blocks, copied_in, _, frames) = run(false, &long);
    assert_eq!(framed_text, text);
    assert_eq!(framed_blocks, blocks);
    assert_eq!(copied_in, 0.0);
    assert!(frames >= 1.0, "{frames} frames");
}
