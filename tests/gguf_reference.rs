//! The GGUF reader against llama.cpp's own `gguf` Python package: a file written by it (F32, F16,
//! BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K tensors) decodes to the values its numpy dequantizer
//! gives, and every truncation or corruption is an error, never a panic.

mod support;

use std::process::Command;

use gpu::model::gguf::{GgufFile, GgufValue};
use support::*;

#[test]
fn reads_what_the_reference_writer_wrote() {
    let dir = temp_dir("gguf-ref");
    let (file, json_path) = (dir.join("ref.gguf"), dir.join("ref.json"));
    let status = Command::new(python_venv())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/gguf_reference.py"))
        .arg(&file)
        .arg(&json_path)
        .status()
        .expect("run python");
    assert!(status.success());
    let expected = json(&std::fs::read_to_string(&json_path).unwrap());
    let g = GgufFile::open(&file).unwrap();

    assert_eq!(g.version, 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("test.u32").unwrap(), 4096);
    assert_eq!(g.get("test.i32").unwrap(), &GgufValue::I32(-7));
    assert_eq!(g.get_f64("test.f32").unwrap() as f32, 1e-5);
    assert_eq!(g.get("test.bool").unwrap(), &GgufValue::Bool(true));
    assert_eq!(g.get_str("test.string").unwrap(), "héllo");
    let strings: Vec<&str> = match g.get("test.strings").unwrap() {
        GgufValue::Array(v) => v.iter().filter_map(GgufValue::as_str).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(strings, ["<s>", "</s>", "Ġthe"]);
    assert!(g.get_u64("test.string").is_err());
    assert!(g.get("no.such.key").unwrap_err().to_string().contains("no.such.key"));

    let tensors = expected.as_object().unwrap();
    assert_eq!(tensors.len(), 8);
    for (name, want) in tensors {
        let info = g.tensor(name).unwrap();
        assert_eq!(info.dtype.to_string(), want["type"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(info.shape(), shape, "{name}");
        let got = g.dequantize(name).unwrap();
        let want: Vec<f32> = want["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{name}[{i}]: {a} vs {b}");
        }
    }

    // Truncated anywhere before the end of the last tensor (the writer pads the file to its
    // 32-byte alignment): an error, never a panic.
    let bytes = std::fs::read(&file).unwrap();
    for len in (0..bytes.len() - 32).step_by(7) {
        assert!(GgufFile::parse(bytes[..len].to_vec()).is_err(), "a {len}-byte prefix parsed");
    }
    // Corrupt bytes in the header and directory: no panic (errors or, for data bytes, values).
    for i in (0..bytes.len().min(1024)).step_by(3) {
        let mut bad = bytes.clone();
        bad[i] ^= 0xa5;
        if let Ok(g) = GgufFile::parse(bad) {
            for t in &g.tensors {
                let _ = g.dequantize(&t.name);
            }
        }
    }
}
