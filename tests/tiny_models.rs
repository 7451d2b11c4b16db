//! The tiny generated models (Llama with tied embeddings; Llama with Llama 3.1 RoPE frequency
//! scaling; Qwen2 with q/k/v biases, halves RoPE and an untied output) against an f32 numpy forward pass that reads our GGUF with llama.cpp's
//! `gguf` package, and through a Hugging Face export and back.

mod support;

use std::process::Command;

use gpu::executor::{Executor, SequenceView};
use gpu::model::gguf::GgufFile;
use gpu::model::tiny::{TinyArch, write_gguf};
use gpu::pool::BlockId;
use support::*;

fn logits(exec: &mut gpu::cpu::ModelExecutor, ids: &[u32]) -> Vec<f32> {
    let table: Vec<BlockId> = (0..16).map(BlockId).collect();
    let view = SequenceView::whole_prompt(ids, &table);
    exec.forward(&[view]).unwrap().remove(0).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tiny_models_match_numpy_and_survive_export() {
    let dir = temp_dir("tiny-models");
    let ids: Vec<u32> = vec![1, 88, 260, 30, 71, 266, 4, 50, 2];
    for arch in [TinyArch::Llama, TinyArch::Llama3, TinyArch::Qwen2] {
        let path = dir.join(format!("{arch:?}.gguf"));
        write_gguf(&path, arch, 11).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let mut exec = gpu::cpu::ModelExecutor::with_precision(&g, "tiny", 16, 4, gpu::cpu::Precision::Exact).unwrap();
        let ours = logits(&mut exec, &ids);

        let out = Command::new(python_venv())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/numpy_forward.py"))
            .arg(&path)
            .arg(serde_json::to_string(&ids).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let reference: Vec<f32> = serde_json::from_slice(&out.stdout).unwrap();
        let d = max_diff(&ours, &reference);
        assert!(d < 1e-4, "{arch:?}: {d} from numpy");

        if arch == TinyArch::Llama3 {
            // Frequency factors cannot be exported (their Hugging Face parameters are unknown).
            assert!(gpu::model::hf::export(&g, &dir.join("llama3-hf")).is_err());
            continue;
        }
        let hf = dir.join(format!("{arch:?}-hf"));
        gpu::model::hf::export(&g, &hf).unwrap();
        let mut back = gpu::cpu::ModelExecutor::from_hf(&hf, 16, 4).unwrap();
        let d = max_diff(&ours, &logits(&mut back, &ids));
        assert!(d < 1e-4, "{arch:?}: {d} after export");
    }
}
