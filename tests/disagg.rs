//! Disaggregated prefill and decode, two processes on loopback serving SmolLM2 (`armature launch`
//! of `examples/disagg.toml`): greedy outputs equal aggregated mode's (`armature serve` of the
//! default topology) for a set of prompts; a prompt that extends an earlier one transfers only
//! the blocks the decode worker lacks, and the counters show it; a short prompt stays local.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const BLOCK: u64 = 16;

fn disagg_topology(gateway: u16, certs: &Path) -> String {
    include_str!("../examples/disagg.toml")
        .replace("127.0.0.1:7420", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:7421", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:7520", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:7521", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:8020", &format!("127.0.0.1:{gateway}"))
        .replace("certs = \"certs/disagg\"", &format!("certs = {:?}", certs.to_str().unwrap()))
        // The extension below adds a few blocks: worth a transfer here.
        .replace("disagg_min_blocks = 4", "disagg_min_blocks = 2")
}

/// Greedy completion: (text, prompt tokens).
fn complete(port: u16, prompt: &str) -> (String, u64) {
    let body = serde_json::json!({
        "model": "SmolLM2-135M-Instruct", "prompt": prompt, "max_tokens": 12, "temperature": 0
    });
    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    let v = json(&text);
    (v["choices"][0]["text"].as_str().unwrap().to_string(), v["usage"]["prompt_tokens"].as_u64().unwrap())
}

const PROMPTS: [&str; 3] = [
    "The history of the city of Paris begins in antiquity, when a Celtic people called the Parisii settled on an island in the river Seine. Over the centuries the settlement grew into one of the great capitals of Europe. The Romans conquered the region and built a town named Lutetia, with baths, an arena and a forum. In the Middle Ages the city became a center of learning.",
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light into chemical energy. Inside the chloroplasts, chlorophyll absorbs mostly blue and red light, and the energy splits water into oxygen, protons and electrons. The electrons travel along a transport chain that pumps protons and makes ATP, while carbon dioxide is fixed into sugars by the Calvin cycle.",
    "A good recipe for bread needs only flour, water, salt and yeast. Mix the flour with warm water and let it rest, then add the salt and the yeast and knead the dough until it is smooth and elastic. Let it rise in a warm place until it doubles, shape it gently, let it rise again, and bake it in a very hot oven with a little steam for a crisp crust.",
];
const EXTENSION: &str = " Now answer a question about the text above, in one short sentence, and do not repeat the text: what is the single most important idea in it, and why does it matter to a reader today?";
const SHORT: &str = "Name a color:";

#[test]
fn disaggregated_output_equals_aggregated_and_only_missing_blocks_move() {
    // Aggregated reference: the embedded default topology, one CPU worker.
    let port = free_port();
    let dir = temp_dir("disagg");
    let agg_config = dir.join("aggregated.toml");
    let default = include_str!("../cluster.toml").replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
    std::fs::write(&agg_config, default).unwrap();
    let mut serve = Proc::spawn(&["serve", "--config", agg_config.to_str().unwrap()], dir.join("serve.log"));
    assert!(wait_health(port, 200, Duration::from_secs(120)), "aggregated server did not start");
    let extended = format!("{}{EXTENSION}", PROMPTS[0]);
    let mut reference: Vec<String> = PROMPTS.iter().map(|p| complete(port, p).0).collect();
    reference.push(complete(port, &extended).0);
    reference.push(complete(port, SHORT).0);
    drop(serve.child.kill());
    serve.wait_exit(Duration::from_secs(10));

    // Disaggregated: certificates, then a prefill node and a decode node.
    let port = free_port();
    let certs = dir.join("certs");
    let config = dir.join("disagg.toml");
    std::fs::write(&config, disagg_topology(port, &certs)).unwrap();
    cert_init(&config);
    for f in ["ca.pem", "prefill.pem", "prefill.key", "decode.pem", "decode.key"] {
        assert!(certs.join(f).exists(), "{f}");
    }
    assert!(
        !certs.join("ca.key").exists() && dir.join("certs.ca.key").exists(),
        "the CA key is kept beside the directory"
    );
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    let both = || {
        let (status, _, body) = http("GET", port, "/health", None);
        status == 200 && json(&body)["workers"].as_array().is_some_and(|w| w.len() == 2)
    };
    assert!(wait_until(Duration::from_secs(120), both), "disaggregated cluster did not start");
    let m = |name: &str| metric(port, name);

    let mut expected_blocks = 0u64;
    for (i, p) in PROMPTS.iter().enumerate() {
        let (text, prompt_tokens) = complete(port, p);
        assert_eq!(text, reference[i], "prompt {i}: disaggregated output differs from aggregated");
        expected_blocks += (prompt_tokens - 1) / BLOCK;
    }
    assert_eq!(m("armature_disagg_requests_total{outcome=\"transferred\"}"), 3.0);
    assert_eq!(m("armature_disagg_requests_total{outcome=\"fallback\"}"), 0.0);
    assert_eq!(m("armature_kv_transfer_blocks_total"), expected_blocks as f64, "every usable block moved once");
    assert!(m("armature_transfer_frames_total{direction=\"in\"") >= 3.0);
    let status = json(&http("GET", port, "/debug/router", None).2);
    assert_eq!(status["recent"][0]["prefill"], "prefill/cpu", "{status}");

    // The first document again, with a question after it: the decode worker holds the
    // document's blocks, so only the question's travel.
    let first_tokens = complete_tokens(port, PROMPTS[0]);
    let (before_moved, before_skipped) =
        (m("armature_kv_transfer_blocks_total"), m("armature_kv_transfer_blocks_skipped_total"));
    let (text, tokens) = complete(port, &extended);
    assert_eq!(text, reference[3], "extended prompt");
    let held = first_tokens / BLOCK;
    assert_eq!(m("armature_kv_transfer_blocks_skipped_total") - before_skipped, held as f64, "blocks already there");
    assert_eq!(
        m("armature_kv_transfer_blocks_total") - before_moved,
        ((tokens - 1) / BLOCK - held) as f64,
        "only the rest moved"
    );

    // A short prompt is prefilled where it is decoded.
    let transfers = m("armature_disagg_requests_total{outcome=\"transferred\"}");
    assert_eq!(complete(port, SHORT).0, reference[4]);
    assert_eq!(m("armature_disagg_requests_total{outcome=\"transferred\"}"), transfers);
    assert!(m("armature_router_disagg_decisions_total{outcome=\"short\"}") >= 1.0);

    // A disaggregated request reports log probabilities like any other: one per token, the
    // greedy choice on top.
    let transfers = m("armature_disagg_requests_total{outcome=\"transferred\"}");
    // A prompt the decode worker has not seen past its first document: its blocks must move.
    let fresh = format!("{} {}", PROMPTS[1], PROMPTS[0]);
    let body = serde_json::json!({
        "model": "SmolLM2-135M-Instruct", "prompt": fresh, "max_tokens": 6, "temperature": 0, "logprobs": 2
    });
    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    let v = json(&text);
    assert_eq!(m("armature_disagg_requests_total{outcome=\"transferred\"}"), transfers + 1.0, "it was disaggregated");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(
        lp["token_logprobs"].as_array().unwrap().len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for (top, chosen) in lp["top_logprobs"].as_array().unwrap().iter().zip(lp["token_logprobs"].as_array().unwrap()) {
        let best = top.as_object().unwrap().values().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert_eq!(best, chosen.as_f64().unwrap(), "{lp}");
    }

    // A constrained request disaggregated: its first token, sampled on the decode worker after
    // the blocks moved, is already under the constraint, and so is the rest.
    let transfers = m("armature_disagg_requests_total{outcome=\"transferred\"}");
    let fresh = format!("{} {}", PROMPTS[2], PROMPTS[0]);
    let body = serde_json::json!({
        "model": "SmolLM2-135M-Instruct", "prompt": fresh, "max_tokens": 8, "temperature": 1.0, "seed": 3,
        "structured_outputs": { "regex": "[0-9]{4}-[0-9]{2}" }
    });
    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    assert_eq!(m("armature_disagg_requests_total{outcome=\"transferred\"}"), transfers + 1.0, "it was disaggregated");
    let out = json(&text)["choices"][0]["text"].as_str().unwrap().to_string();
    let b = out.as_bytes();
    assert!(b.len() == 7 && b[4] == b'-' && b.iter().enumerate().all(|(i, c)| i == 4 || c.is_ascii_digit()), "{out:?}");
    drop(launch);
}

/// The prompt-token count of a prompt, from a completion of it.
fn complete_tokens(port: u16, prompt: &str) -> u64 {
    complete(port, prompt).1
}
