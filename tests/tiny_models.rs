//! The tiny generated models of every family (Llama with tied embeddings; Llama with Llama 3.1 RoPE
//! frequency scaling; Qwen2 with q/k/v biases, halves RoPE and an untied output; Qwen3; Gemma 1, 2
//! and 3) against an f32 numpy forward pass that reads our GGUF with llama.cpp's `gguf` package,
//! and through a Hugging Face export and back; the same models in k-quants against numpy and
//! against llama.cpp's own kernels.

mod support;

use std::process::Command;

use gpu::executor::{Executor, SequenceView};
use gpu::model::gguf::GgufFile;
use gpu::model::tiny::{TinyArch, TinySize, TinyWeights, write_gguf, write_gguf_sized};
use gpu::pool::BlockId;
use support::*;

fn logits(exec: &mut gpu::cpu::ModelExecutor, ids: &[u32]) -> Vec<f32> {
    let table: Vec<BlockId> = (0..16).map(BlockId).collect();
    let view = SequenceView::whole_prompt(ids, &table);
    exec.forward(&[view]).unwrap().remove(0).unwrap()
}

/// The GGUF architecture of a tiny model that is not a mixture (its Hugging Face model type too).
fn gguf_names(arch: TinyArch) -> &'static str {
    match arch {
        TinyArch::Llama | TinyArch::Llama3 => "llama",
        TinyArch::Qwen2 => "qwen2",
        TinyArch::Qwen3 => "qwen3",
        TinyArch::Gemma => "gemma",
        TinyArch::Gemma2 => "gemma2",
        TinyArch::Phi3 => "phi3",
        other => panic!("{other:?} has a model type of its own"),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tiny_models_match_numpy_and_survive_export() {
    let dir = temp_dir("tiny-models");
    let ids: Vec<u32> = vec![1, 88, 260, 30, 71, 266, 4, 50, 2];
    for arch in TinyArch::ALL {
        let path = dir.join(format!("{arch:?}.gguf"));
        write_gguf(&path, arch, 11).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let mut exec = gpu::cpu::ModelExecutor::with_precision(&g, "tiny", 16, 4, gpu::cpu::Precision::Exact).unwrap();
        let ours = logits(&mut exec, &ids);

        let reference = numpy_logits(&path, &ids);
        let d = max_diff(&ours, &reference);
        println!("{arch:?}: {d:.2e} from numpy");
        assert!(d < 1e-4, "{arch:?}: {d} from numpy");

        if arch == TinyArch::Llama3 {
            // Frequency factors cannot be exported (their Hugging Face parameters are unknown).
            assert!(gpu::model::hf::export(&g, &dir.join("llama3-hf")).is_err());
            continue;
        }
        let hf = dir.join(format!("{arch:?}-hf"));
        gpu::model::hf::export(&g, &hf).unwrap();
        // The model types Transformers picks its classes by (`tests/python/transformers_check.py`
        // ran these folders through Transformers 5.25).
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
        let model_type = match arch {
            TinyArch::Gemma3 => "gemma3_text",
            TinyArch::Mixtral => "mixtral",
            TinyArch::Qwen3Moe => "qwen3_moe",
            other => gguf_names(other),
        };
        assert_eq!(config["model_type"], model_type, "{arch:?}");
        assert!(config["query_pre_attn_scalar"].is_null() || config["query_pre_attn_scalar"].is_u64(), "{arch:?}");
        let mut back = gpu::cpu::ModelExecutor::from_hf(&hf, 16, 4).unwrap();
        let d = max_diff(&ours, &logits(&mut back, &ids));
        assert!(d < 1e-4, "{arch:?}: {d} after export");
    }
}

/// A Phi-3 GGUF without a chat template gets Phi-3's turns, and `<|end|>` ends a reply.
#[test]
fn phi3_gets_its_turns_and_ends_a_reply_at_end() {
    let dir = temp_dir("phi3-chat");
    let path = dir.join("phi3.gguf");
    write_gguf(&path, TinyArch::Phi3, 3).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let front = gpu::model::ModelFrontend::from_gguf(&g, "phi3".into(), None, 64).unwrap();
    let prompt = front.render_chat(&[gpu::chat::ChatMessage::new("user", "Hi")]).unwrap();
    assert_eq!(prompt, "<|user|>\nHi<|end|>\n<|assistant|>\n");
    let end = front.tokenizer.encode("<|end|>");
    assert_eq!(end.len(), 1, "<|end|> is one token");
    assert!(front.tokenizer.eos_tokens().contains(&end[0]), "<|end|> ends a reply");
}

/// Random blocks of each quantized format this build reads, with finite f16 scales where each
/// format keeps them, dequantized by us and by llama.cpp's `gguf` package.
#[test]
fn quantized_formats_dequantize_as_llama_cpp_does() {
    use gpu::model::quant::GgmlType;
    let dir = temp_dir("quant-formats");
    let path = dir.join("quants.gguf");
    // (type, bytes a block, where its f16 scales sit)
    let formats: [(GgmlType, usize, &[usize]); 8] = [
        (GgmlType::Q4_0, 18, &[0]),
        (GgmlType::Q4_1, 20, &[0, 2]),
        (GgmlType::Q5_0, 22, &[0]),
        (GgmlType::Q5_1, 24, &[0, 2]),
        (GgmlType::Q8_0, 34, &[0]),
        (GgmlType::Q4_K, 144, &[0, 2]),
        (GgmlType::Q5_K, 176, &[0, 2]),
        (GgmlType::Q6_K, 210, &[208]),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut w = gpu::model::gguf_write::GgufWriter::default();
    w.meta("general.architecture", gpu::model::gguf::GgufValue::String("llama".into()));
    let scales: [u16; 4] = [0x2e66, 0x3400, 0xb800, 0x1400]; // 0.1, 0.25, -0.5, 2^-10
    for (dtype, block, at) in formats {
        let elements = 2 * 256;
        let blocks = elements / GgmlType::block(dtype).unwrap().0 as usize;
        let mut bytes: Vec<u8> = (0..blocks * block).map(|_| next() as u8).collect();
        for b in 0..blocks {
            for &o in at {
                let s = scales[(next() % 4) as usize].to_le_bytes();
                bytes[b * block + o..b * block + o + 2].copy_from_slice(&s);
            }
        }
        w.raw_tensor(&format!("{dtype}"), &[2, 256], dtype, bytes);
    }
    w.write(&path).unwrap();
    let script = r#"
import json, sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
print(json.dumps({t.name: [float(v) for v in dequantize(t.data, t.tensor_type).reshape(-1)] for t in r.tensors}))
"#;
    let out = Command::new(python_venv()).args(["-c", script]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: std::collections::BTreeMap<String, Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();
    let g = GgufFile::open(&path).unwrap();
    for (dtype, _, _) in formats {
        let name = format!("{dtype}");
        let ours = g.dequantize(&name).unwrap();
        assert_eq!(ours.len(), 512);
        assert_eq!(ours, reference[&name], "{name}");
        assert!(ours.iter().any(|&v| v != 0.0), "{name}");
    }
}

/// llama.cpp's logits for the k-quant models (`tests/python/kquant_reference.py`).
const KQUANT_REFERENCE: &str = include_str!("reference/tiny_kquants.json");

/// The tiny models with their matrices in Q4_K and Q6_K (as llama.cpp's Q4_K_M mixes them), larger
/// so that rows are whole super-blocks: exact mode against numpy, and the fast mode, which keeps
/// the k-quants at their width, against llama.cpp running the same files.
#[test]
fn k_quant_models_match_numpy_exactly_and_llama_cpp_in_fast_mode() {
    let dir = temp_dir("kquant-models");
    let reference: serde_json::Value = serde_json::from_str(KQUANT_REFERENCE).unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(reference["prompts"].clone()).unwrap();
    for (arch, ffn) in [
        (TinyArch::Llama, 512),
        (TinyArch::Gemma3, 512),
        (TinyArch::Qwen3, 512),
        (TinyArch::Mixtral, 512),
        (TinyArch::Qwen3Moe, 1024),
    ] {
        let name = format!("{arch:?}").to_lowercase();
        let want = &reference["models"][&name];
        let path = dir.join(format!("{name}.gguf"));
        let size = TinySize { hidden: 256, ffn, layers: None, weights: TinyWeights::KQuants };
        write_gguf_sized(&path, arch, 5, size).unwrap();
        assert_eq!(
            gpu::model::fetch::sha256_file(&path).unwrap(),
            want["sha256"].as_str().unwrap(),
            "{name}: the generator changed; regenerate tests/reference/tiny_kquants.json (see its script)"
        );
        let g = GgufFile::open(&path).unwrap();

        let mut exact = gpu::cpu::ModelExecutor::with_precision(&g, "tiny", 16, 4, gpu::cpu::Precision::Exact).unwrap();
        let d = max_diff(&logits(&mut exact, &prompts[0]), &numpy_logits(&path, &prompts[0]));
        assert!(d < 1e-4, "{name}: {d} from numpy");

        let mut fast = gpu::cpu::ModelExecutor::from_gguf(&g, "tiny", 16, 4).unwrap();
        // The matrices stay k-quants, 4.75 and 6.625 bits a weight where the 8-bit form took 10; the
        // f32 embeddings (267 rows, not whole groups of 8) and norms lift the average.
        let bits = 32.0 * fast.weight_bytes() as f64 / exact.weight_bytes() as f64;
        println!("{name}: {bits:.2} bits a weight in fast mode");
        assert!(bits < 8.0, "{name}: {bits:.2} bits a weight");
        // llama.cpp's k-quant kernels (8-bit activations in 256-value blocks) move its logits
        // from the exact values of the same file; ours (8-bit activations in 32-value blocks) may
        // move them as far, not further. On the f32 model, llama.cpp and numpy agree within 0.014.
        let (mut ours_off, mut theirs_off) = (0.0f32, 0.0f32);
        for (ids, theirs) in prompts.iter().zip(want["last_logits"].as_array().unwrap()) {
            let theirs: Vec<(usize, f32)> =
                serde_json::from_value::<Vec<f32>>(theirs.clone()).unwrap().into_iter().enumerate().collect();
            let (ours, right) = (logits(&mut fast, ids), logits(&mut exact, ids));
            let right: Vec<(usize, f32)> = right.into_iter().enumerate().collect();
            let (o, t) =
                (centered_gap(&ours, &right), centered_gap(&right.iter().map(|p| p.1).collect::<Vec<_>>(), &theirs));
            println!(
                "{name}, {} tokens: exact values to fast mode {o:.3}, to llama.cpp {t:.3}; fast mode to llama.cpp {:.3}",
                ids.len(),
                centered_gap(&ours, &theirs)
            );
            (ours_off, theirs_off) = (ours_off.max(o), theirs_off.max(t));
        }
        assert!(
            ours_off <= 1.25 * theirs_off,
            "{name}: fast mode up to {ours_off} from the exact logits, llama.cpp {theirs_off}"
        );
    }
}
