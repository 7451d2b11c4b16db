//! Log probabilities in OpenAI's shapes: chat's `logprobs.content[]` (`token`, `logprob`,
//! `bytes`, `top_logprobs`) and completions' `tokens`, `token_logprobs`, `top_logprobs` (token to
//! logprob) and `text_offset`. Workers send token ids; the text comes from this gateway's
//! tokenizer, which discovery made sure is the workers' own.

use gpu::tokenizer::Tokenizer;
use runtime::request::TokenLogprob;
use serde_json::{Map, Value, json};

/// Renders a request's log probabilities as they arrive, in its endpoint's shape.
pub struct Writer {
    tokenizer: std::sync::Arc<dyn Tokenizer>,
    chat: bool,
    /// Characters of completion text so far (`text_offset`).
    offset: usize,
    /// Every entry, for a whole (not streamed) response.
    all: Vec<TokenLogprob>,
    /// The echoed prompt's first token (which has no log probability), for a whole response.
    first: Option<u32>,
}

impl Writer {
    pub fn new(tokenizer: std::sync::Arc<dyn Tokenizer>, chat: bool) -> Self {
        Self { tokenizer, chat, offset: 0, all: Vec::new(), first: None }
    }

    /// The `logprobs` of one streamed chunk.
    pub fn chunk(&mut self, entries: &[TokenLogprob]) -> Value {
        self.render(None, entries)
    }

    /// The `logprobs` of the streamed chunk that echoes the prompt (completions' `echo`): its
    /// first token, with a `null` log probability, then the rest of its tokens.
    pub fn prompt_chunk(&mut self, first: u32, entries: &[TokenLogprob]) -> Value {
        self.render(Some(first), entries)
    }

    fn render(&mut self, first: Option<u32>, entries: &[TokenLogprob]) -> Value {
        if self.chat {
            chat(entries, &*self.tokenizer)
        } else {
            completion(first, entries, &*self.tokenizer, &mut self.offset)
        }
    }

    /// Keep `entries` for `whole`.
    pub fn keep(&mut self, entries: Vec<TokenLogprob>) {
        self.all.extend(entries);
    }

    /// Keep the scored prompt for `whole`, before every generated token.
    pub fn keep_prompt(&mut self, first: u32, entries: Vec<TokenLogprob>) {
        self.first = Some(first);
        self.all.splice(0..0, entries);
    }

    /// The `logprobs` of the whole response.
    pub fn whole(&mut self) -> Value {
        let (first, all) = (self.first.take(), std::mem::take(&mut self.all));
        self.render(first, &all)
    }
}

/// What OpenAI reports for a token with no probability (JSON has no minus infinity).
const FLOOR: f32 = -9999.0;

fn value(logprob: f32) -> f32 {
    if logprob.is_finite() { logprob.max(FLOOR) } else { FLOOR }
}

/// A token's text and bytes (a special token, which stands for no bytes of text, by its name).
fn token(tok: &dyn Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id).to_vec();
    if bytes.is_empty() {
        let name = tok.token_text(id).unwrap_or("").to_string();
        return (name.clone(), name.into_bytes());
    }
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Chat's `logprobs` of a choice (or of one chunk's delta).
pub fn chat(entries: &[TokenLogprob], tok: &dyn Tokenizer) -> Value {
    let item = |id: u32, logprob: f32| {
        let (text, bytes) = token(tok, id);
        json!({ "token": text, "logprob": value(logprob), "bytes": bytes })
    };
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = item(e.id, e.logprob);
            v["top_logprobs"] = e.top.iter().map(|&(id, lp)| item(id, lp)).collect();
            v
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// Completions' `logprobs` of a choice (or of one chunk), whose first token starts at character
/// `offset` of the text; `offset` moves past them (a special token, no text, moves it not at all).
/// With `first`, the echoed prompt's first token leads, its log probabilities `null`.
pub fn completion(first: Option<u32>, entries: &[TokenLogprob], tok: &dyn Tokenizer, offset: &mut usize) -> Value {
    let (mut tokens, mut token_logprobs, mut top_logprobs, mut text_offset) = (vec![], vec![], vec![], vec![]);
    let mut place = |id: u32, tokens: &mut Vec<String>| {
        text_offset.push(*offset);
        *offset += String::from_utf8_lossy(tok.token_bytes(id)).chars().count();
        tokens.push(token(tok, id).0);
    };
    if let Some(id) = first {
        place(id, &mut tokens);
        token_logprobs.push(Value::Null);
        top_logprobs.push(Value::Null);
    }
    for e in entries {
        place(e.id, &mut tokens);
        token_logprobs.push(json!(value(e.logprob)));
        let mut top = Map::new();
        for &(id, lp) in &e.top {
            top.insert(token(tok, id).0, json!(value(lp)));
        }
        top_logprobs.push(Value::Object(top));
    }
    json!({ "tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset })
}

#[cfg(test)]
mod tests {
    use gpu::executor::TestTokenizer;

    use super::*;

    #[test]
    fn chat_and_completion_shapes_carry_text_bytes_and_offsets() {
        let tok = TestTokenizer::default();
        let (a, b) = (u32::from(b'a'), u32::from(b'b'));
        let entries = vec![
            TokenLogprob { id: a, logprob: -0.5, top: vec![(a, -0.5), (b, -1.5)] },
            TokenLogprob { id: b, logprob: f32::NEG_INFINITY, top: vec![] },
        ];
        let c = chat(&entries, &tok);
        assert_eq!(c["content"][0]["token"], "a");
        assert_eq!(c["content"][0]["bytes"], json!([97]));
        assert_eq!(c["content"][0]["top_logprobs"][1]["token"], "b");
        assert_eq!(c["content"][0]["top_logprobs"][1]["logprob"], -1.5);
        assert_eq!(c["content"][1]["logprob"], -9999.0, "no minus infinity in JSON");
        let mut offset = 3;
        let p = completion(None, &entries, &tok, &mut offset);
        assert_eq!(p["tokens"], json!(["a", "b"]));
        assert_eq!(p["token_logprobs"], json!([-0.5, -9999.0]));
        assert_eq!(p["top_logprobs"][0], json!({ "a": -0.5, "b": -1.5 }));
        assert_eq!(p["text_offset"], json!([3, 4]));
        assert_eq!(offset, 5);
        // An echoed prompt: its first token leads, with nulls.
        let mut offset = 0;
        let p = completion(Some(b), &entries, &tok, &mut offset);
        assert_eq!(p["tokens"], json!(["b", "a", "b"]));
        assert_eq!(p["token_logprobs"], json!([null, -0.5, -9999.0]));
        assert_eq!(p["top_logprobs"][0], json!(null));
        assert_eq!(p["text_offset"], json!([0, 1, 2]));
    }
}
