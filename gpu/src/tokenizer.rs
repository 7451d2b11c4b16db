//! The tokenizer seam: text to token ids and back, byte-exact, plus streaming detokenization.

/// A model's tokenizer.
pub trait Tokenizer: Send + Sync {
    fn encode(&self, text: &str) -> Vec<u32>;
    /// The bytes a token stands for in generated text (empty for special tokens).
    fn token_bytes(&self, id: u32) -> &[u8];
    fn vocab_size(&self) -> usize;
    /// Tokens that end generation.
    fn eos_tokens(&self) -> &[u32];

    /// The token a prompt starts with, when the model asks for one (GGUF `add_bos_token`).
    fn prompt_bos(&self) -> Option<u32> {
        None
    }

    /// The text of a token as the vocabulary spells it (chat templates' `bos_token`).
    fn token_text(&self, _id: u32) -> Option<&str> {
        None
    }

    /// A prompt's tokens: `encode`, with the beginning-of-sequence token in front when the model
    /// asks for one and the text (a rendered chat template, say) does not already start with it.
    fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode(text);
        if let Some(bos) = self.prompt_bos()
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        ids
    }

    fn decode(&self, tokens: &[u32]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.token_bytes(t).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns generated tokens into text as they arrive, holding back bytes of an unfinished UTF-8
/// character.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    /// Add one token; returns the text that is now complete.
    pub fn push(&mut self, tokenizer: &dyn Tokenizer, token: u32) -> String {
        self.pending.extend_from_slice(tokenizer.token_bytes(token));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for more bytes; garbage in the middle is replaced.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return text;
            }
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }

    /// Whatever is left at the end of generation.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}
