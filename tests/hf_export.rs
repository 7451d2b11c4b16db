//! `armature model export --hf`: SmolLM2 from GGUF to a Hugging Face folder, loaded back through
//! the Hugging Face path (safetensors, tokenizer.json, tokenizer_config.json, halves RoPE with
//! un-permuted q/k): the same logits, tokens and chat prompts as the GGUF; served, its log
//! probabilities (generated, and a prompt's with `echo`) match the numpy forward pass.

mod support;

use std::process::Command;

use gpu::chat::ChatMessage;
use gpu::executor::{Executor, SequenceView};
use gpu::model::ModelFrontend;
use gpu::pool::BlockId;
use runtime::config::ModelSection;
use support::*;

const REFERENCE: &str = include_str!("reference/smollm2.json");

#[test]
fn exported_folder_loads_back_with_identical_outputs() {
    let export = temp_dir("hf-export");
    let dir = export.join("smollm2-hf");
    let out = Command::new(bin())
        .args(["model", "export", "--hf"])
        .arg(&dir)
        .env("ARMATURE_CACHE_DIR", model_cache())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let config = json(&std::fs::read_to_string(dir.join("config.json")).unwrap());
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["tie_word_embeddings"], true);

    let gguf_path =
        gpu::model::fetch::fetch(&gpu::model::fetch::DEFAULT_MODEL, &model_cache(), &mut |_, _| {}).unwrap();
    let g = gpu::model::gguf::GgufFile::open(&gguf_path).unwrap();
    let reference = json(REFERENCE);

    // Tokenizer and chat template from the folder behave as the GGUF's.
    let from_gguf = ModelFrontend::from_gguf(&g, "m".into(), None, 16).unwrap();
    let section = ModelSection { source: runtime::config::ModelSource::Path(dir.clone()), ..Default::default() };
    let from_hf = ModelFrontend::load(&section, "m".into()).unwrap();
    assert_eq!(from_hf.context_length, 8192);
    for case in reference["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(from_hf.tokenizer.encode(text), from_gguf.tokenizer.encode(text), "{text:?}");
    }
    assert_eq!(from_hf.tokenizer.eos_tokens(), from_gguf.tokenizer.eos_tokens());
    for case in reference["chat"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        assert_eq!(from_hf.chat.render(&messages, true).unwrap(), from_gguf.chat.render(&messages, true).unwrap());
    }

    // Logits: the folder's f32 weights with halves RoPE against the GGUF in exact mode.
    let mut a = gpu::cpu::ModelExecutor::with_precision(&g, "gguf", 8, 16, gpu::cpu::Precision::Exact).unwrap();
    let mut b = gpu::cpu::ModelExecutor::from_hf(&dir, 8, 16).unwrap();
    let table: Vec<BlockId> = (0..8).map(BlockId).collect();
    let tokens = from_gguf.tokenizer.encode("The capital of France is");
    let view = SequenceView::whole_prompt(&tokens, &table);
    let la = a.forward(&[view]).unwrap().remove(0).unwrap();
    let lb = b.forward(&[view]).unwrap().remove(0).unwrap();
    let worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "GGUF and exported folder differ by {worst}");
    assert_eq!(gpu::sampling::argmax(&lb), 7042, "\" Paris\"");

    // Served (a folder runs in exact mode), the log probabilities the official client gets are
    // within 1e-3 of the f32 numpy forward pass: generated, and a prompt's scores with `echo`.
    let port = free_port();
    let config = export.join("cluster.toml");
    let topology = format!(
        r#"[cluster]
name = "hf"
cookie = "a-cookie-for-the-tests"

[model]
source = {dir:?}
name = "smollm2-hf"

[[nodes]]
name = "n0"
control = "127.0.0.1:{}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", kv_blocks = 64 }}]
"#,
        free_port()
    );
    std::fs::write(&config, topology).unwrap();
    let _serve = Proc::spawn(&["serve", "--config", config.to_str().unwrap()], export.join("serve.log"));
    assert!(wait_health(port, 200, std::time::Duration::from_secs(120)), "the folder was not served");
    let url = format!("http://127.0.0.1:{port}/v1");
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/smollm2.json");
    let passed = python_checks("logprobs_numpy.py", &[&url, "smollm2-hf", reference, "1e-3"]);
    assert_eq!(passed, ["generated-logprobs", "prompt-scores"]);
}
