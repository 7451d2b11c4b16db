//! The test executor: a deterministic stand-in for a model, for tests and for running the cluster
//! without weights. Its logits are a hash of the recent context, so greedy output is a fixed
//! function of the prompt and sampled output a fixed function of (prompt, seed). It emits
//! readable words and, more and more likely as the reply grows, end-of-turn.

use std::time::Duration;

use super::{Executor, ExecutorError, ModelInfo, SequenceView};
use crate::tokenizer::Tokenizer;

/// A prompt containing this text makes the test executor panic on its first step, so tests can
/// exercise worker supervision.
pub const TEST_PANIC_MARKER: &str = "<<armature-test-panic>>";

const WORDS: [&str; 64] = [
    "the ", "quick ", "river ", "stone ", "light ", "bright ", "cloud ", "forest ", "green ", "silver ", "wind ",
    "calm ", "morning ", "over ", "under ", "and ", "a ", "small ", "garden ", "song ", "bird ", "field ", "north ",
    "south ", "blue ", "old ", "new ", "tower ", "road ", "rain ", "sun ", "moon ", "star ", "sea ", "ship ", "sail ",
    "harbor ", "bridge ", "city ", "lamp ", "door ", "window ", "quiet ", "loud ", "fast ", "slow ", "warm ", "cold ",
    "snow ", "hill ", "valley ", "path ", "stream ", "leaf ", "tree ", "root ", "seed ", "flower ", "Hello", ", ",
    ". ", "!\n", "é", "日本 ",
];

const BYTES: u32 = 256;
pub const ENDOFTEXT: u32 = 256;
pub const IM_START: u32 = 257;
pub const IM_END: u32 = 258;
const FIRST_WORD: u32 = 259;
const SPECIALS: [(&str, u32); 3] = [("<|endoftext|>", ENDOFTEXT), ("<|im_start|>", IM_START), ("<|im_end|>", IM_END)];

/// Bytes for input; whole words for output; ChatML specials.
#[derive(Debug)]
pub struct TestTokenizer {
    table: Vec<Vec<u8>>,
}

impl Default for TestTokenizer {
    fn default() -> Self {
        let mut table: Vec<Vec<u8>> = (0..BYTES).map(|b| vec![b as u8]).collect();
        table.extend([Vec::new(), Vec::new(), Vec::new()]);
        table.extend(WORDS.iter().map(|w| w.as_bytes().to_vec()));
        Self { table }
    }
}

impl Tokenizer for TestTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (s, id) in SPECIALS {
                if let Some(after) = rest.strip_prefix(s) {
                    out.push(id);
                    rest = after;
                    continue 'outer;
                }
            }
            let ch = rest.chars().next().expect("non-empty");
            out.extend(rest[..ch.len_utf8()].bytes().map(u32::from));
            rest = &rest[ch.len_utf8()..];
        }
        out
    }

    fn token_bytes(&self, id: u32) -> &[u8] {
        self.table.get(id as usize).map_or(&[], Vec::as_slice)
    }

    fn vocab_size(&self) -> usize {
        self.table.len()
    }

    fn eos_tokens(&self) -> &[u32] {
        &[ENDOFTEXT, IM_END]
    }
}

#[derive(Debug)]
pub struct TestExecutor {
    step_delay: Duration,
    context_length: u32,
    panic_marker: Vec<u32>,
}

impl TestExecutor {
    pub fn new(step_delay: Duration, context_length: u32) -> Self {
        let panic_marker = TestTokenizer::default().encode(TEST_PANIC_MARKER);
        Self { step_delay, context_length, panic_marker }
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Executor for TestExecutor {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "armature-test".into(),
            vocab_size: (FIRST_WORD as usize) + WORDS.len(),
            context_length: self.context_length,
        }
    }

    fn forward(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<Option<Vec<f32>>>, ExecutorError> {
        if !self.step_delay.is_zero() {
            std::thread::sleep(self.step_delay);
        }
        let vocab = self.info().vocab_size;
        Ok(batch
            .iter()
            .map(|seq| {
                if seq.start == 0 && seq.tokens.windows(self.panic_marker.len()).any(|w| w == self.panic_marker) {
                    panic!("test executor: the prompt asked for a panic");
                }
                if !seq.wants_logits {
                    return None;
                }
                let ctx = &seq.tokens[seq.tokens.len().saturating_sub(4)..];
                let h = ctx.iter().fold(mix(seq.tokens.len() as u64), |h, &t| mix(h ^ u64::from(t)));
                let mut logits = vec![f32::NEG_INFINITY; vocab];
                for id in FIRST_WORD..vocab as u32 {
                    logits[id as usize] = (mix(h ^ u64::from(id)) % 1000) as f32 / 100.0;
                }
                let generated = seq.tokens.len().saturating_sub(seq.prompt_len) as f32;
                logits[IM_END as usize] = 6.0 + 0.08 * generated;
                Some(logits)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_with_specials() {
        let t = TestTokenizer::default();
        let text = "<|im_start|>user\nHéllo 日本<|im_end|>\n";
        let ids = t.encode(text);
        assert_eq!(ids[0], IM_START);
        assert_eq!(ids.iter().filter(|&&i| i == IM_END).count(), 1);
        // Specials decode to nothing; everything else byte-exact.
        assert_eq!(t.decode(&ids), "user\nHéllo 日本\n");
        assert_eq!(ids.len(), 1 + "user\nHéllo 日本".len() + 1 + 1);
    }

    fn view(t: &[u32]) -> SequenceView<'_> {
        SequenceView { tokens: t, start: 0, prompt_len: t.len(), blocks: &[], wants_logits: true }
    }

    #[test]
    fn logits_are_a_function_of_context_only() {
        let mut e = TestExecutor::new(Duration::ZERO, 4096);
        let l1 = e.forward(&[view(&[1, 2, 3, 4, 5])]).unwrap();
        let l2 = e.forward(&[view(&[1, 2, 3, 4, 5]), view(&[7, 7])]).unwrap();
        assert_eq!(l1[0], l2[0]);
        assert_ne!(l2[0], l2[1]);
        let l = l1[0].as_ref().unwrap();
        assert_eq!(l.len(), 259 + 64);
        assert_eq!(l[..259].iter().filter(|l| l.is_finite()).count(), 1, "only end-of-turn among specials and bytes");
        let chunk = SequenceView { wants_logits: false, ..view(&[1, 2, 3]) };
        assert_eq!(e.forward(&[chunk]).unwrap(), vec![None]);
    }

    #[test]
    fn panic_marker_panics() {
        let t = TestTokenizer::default();
        let prompt = t.encode(&format!("hi {TEST_PANIC_MARKER}"));
        let mut e = TestExecutor::new(Duration::ZERO, 4096);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.forward(&[view(&prompt)])));
        assert!(r.is_err());
    }
}
