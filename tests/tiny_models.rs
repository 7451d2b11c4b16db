//! The tiny generated models of every family (Llama with tied embeddings; Llama with Llama 3.1 RoPE
//! frequency scaling; Qwen2 with q/k/v biases, halves RoPE and an untied output; Qwen3; Gemma 1, 2
//! and 3) against an f32 numpy forward pass that reads our GGUF with llama.cpp's `gguf` package,
//! and through a Hugging Face export and back.

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
        let mut back = gpu::cpu::ModelExecutor::from_hf(&hf, 16, 4).unwrap();
        let d = max_diff(&ours, &logits(&mut back, &ids));
        assert!(d < 1e-4, "{arch:?}: {d} after export");
    }
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
