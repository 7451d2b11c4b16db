//! SmolLM2-135M-Instruct against reference outputs from llama.cpp and Hugging Face's template
//! rendering (`tests/reference/smollm2.json`, made by `tests/python/smollm2_reference.py`).

mod support;

use gpu::chat::ChatMessage;
use gpu::model::ModelFrontend;
use gpu::model::fetch::{DEFAULT_MODEL, fetch};
use gpu::model::gguf::GgufFile;

const REFERENCE: &str = include_str!("reference/smollm2.json");

fn model() -> GgufFile {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("model-cache");
    let path = fetch(&DEFAULT_MODEL, &cache, &mut |_, _| {}).expect("fetch the default model");
    GgufFile::open(&path).unwrap()
}

#[test]
fn tokenizer_and_chat_template_match_the_references() {
    let reference = support::json(REFERENCE);
    let g = model();
    let m = ModelFrontend::from_gguf(&g, "smollm2".into(), None, 256).unwrap();
    assert_eq!(m.context_length, 8192);
    assert_eq!(m.tokenizer.vocab_size(), 49152);
    assert!(m.tokenizer.eos_tokens().contains(&2), "<|im_end|> ends a turn");

    let cases = reference["tokenize"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
        let got = m.tokenizer.encode(text);
        assert_eq!(got, want, "tokenizing {text:?}");
        // Byte-exact round trip for ordinary text (special tokens decode to nothing).
        if !text.contains("<|") {
            assert_eq!(m.tokenizer.decode(&got), text);
        }
    }

    for case in reference["chat"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let got = m.chat.render(&messages, add).unwrap();
        assert_eq!(got, case["prompt"].as_str().unwrap(), "chat {messages:?}");
    }
}
