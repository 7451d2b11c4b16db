//! Our SentencePiece BPE tokenizer (Llama 2, Mistral GGUFs) against SentencePiece itself: a small
//! BPE model with byte fallback is trained by `tests/python/spm_reference.py`, written into a GGUF
//! as llama.cpp's converter would, loaded back, and every test text must encode to SentencePiece's
//! ids and decode to its text. The same model converted to a Hugging Face `tokenizer.json` (as
//! Llama 2 and Mistral folders carry) must load too, encode as Hugging Face does and decode.

mod support;

use std::process::Command;

use gpu::model::gguf::{GgufFile, GgufValue};
use gpu::model::gguf_write::GgufWriter;
use gpu::tokenizer::Tokenizer;
use support::*;

#[test]
fn sentencepiece_bpe_matches_sentencepiece() {
    let dir = temp_dir("spm-reference");
    let hf_dir = dir.join("hf");
    let out = Command::new(python_venv())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/spm_reference.py"))
        .arg(&hf_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pieces = reference["pieces"].as_array().unwrap();
    let column = |i: usize, f: &dyn Fn(&serde_json::Value) -> GgufValue| {
        GgufValue::Array(pieces.iter().map(|p| f(&p[i])).collect())
    };
    let mut w = GgufWriter::default();
    w.meta("general.architecture", GgufValue::String("llama".into()))
        .meta("tokenizer.ggml.model", GgufValue::String("llama".into()))
        .meta("tokenizer.ggml.tokens", column(0, &|v| GgufValue::String(v.as_str().unwrap().into())))
        .meta("tokenizer.ggml.scores", column(1, &|v| GgufValue::F32(v.as_f64().unwrap() as f32)))
        .meta("tokenizer.ggml.token_type", column(2, &|v| GgufValue::I32(v.as_i64().unwrap() as i32)))
        .meta("tokenizer.ggml.bos_token_id", GgufValue::U32(reference["bos"].as_u64().unwrap() as u32))
        .meta("tokenizer.ggml.eos_token_id", GgufValue::U32(reference["eos"].as_u64().unwrap() as u32));
    let path = dir.join("spm.gguf");
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let tok = gpu::model::tokenizer_from_gguf(&g).unwrap();
    // The model front end (what the gateway loads) takes the same tokenizer.
    let front = gpu::model::ModelFrontend::from_gguf(&g, "spm".into(), None, 16).unwrap();
    assert_eq!(front.tokenizer.encode("Hello world!"), tok.encode("Hello world!"));

    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text), want, "{text:?}");
        // Token bytes keep the space put in front of the text; SentencePiece's decode drops it.
        let decoded = case["decoded"].as_str().unwrap();
        let with_prefix = if decoded.is_empty() { String::new() } else { format!(" {decoded}") };
        assert_eq!(tok.decode(&want), with_prefix, "{text:?}");
    }
    // The Hugging Face folder's tokenizer: its own ids (the same library runs it), and the bytes
    // of its `▁` and `<0xXX>` pieces.
    let (hf, _, bos_text, eos_text) = gpu::model::hf::HfModel::tokenizer(&hf_dir).unwrap();
    assert_eq!((bos_text.as_str(), eos_text.as_str()), ("<s>", "</s>"));
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["hf_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(hf.encode(text), want, "{text:?}");
        // Hugging Face's decode drops the space the normaliser put in front.
        let decoded = hf.decode(&want);
        assert_eq!(decoded.strip_prefix(' ').unwrap_or(&decoded), case["hf_decoded"].as_str().unwrap(), "{text:?}");
    }
    assert_eq!(hf.prompt_bos(), Some(1), "tokenizer_config.json asks for <s>");

    // Prompts start with <s> (add_bos_token defaults to true for these tokenizers), once.
    let bos = reference["bos"].as_u64().unwrap() as u32;
    assert_eq!(tok.encode_prompt("x")[0], bos);
    assert_eq!(tok.encode_prompt("<s>x").iter().filter(|&&t| t == bos).count(), 1);
    assert_eq!(tok.eos_tokens(), &[reference["eos"].as_u64().unwrap() as u32]);
}
