//! The test executor: a deterministic stand-in for a model, for tests and for running the cluster
//! without weights. Its logits are a hash of the recent context, so greedy output is a fixed
//! function of the prompt and sampled output a fixed function of (prompt, seed). It emits
//! readable words and, more and more likely as the reply grows, end-of-turn.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use runtime::kv::BlockLayout;

use super::{DevicePool, Executor, ExecutorError, ModelInfo, SequenceView};
use crate::pool::BlockId;
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
    kv: Option<Arc<TestPool>>,
}

/// A stand-in KV cache: each position's "K" is its token id and its "V" its position, so that
/// blocks can move between workers and every forward pass checks that the blocks it reads hold
/// the sequence's own tokens (a misplaced or corrupted transfer fails loudly).
#[derive(Debug)]
struct TestKv {
    block_size: usize,
    keys: Vec<u32>,
    values: Vec<u32>,
}

impl TestExecutor {
    pub fn new(step_delay: Duration, context_length: u32) -> Self {
        let panic_marker = TestTokenizer::default().encode(TEST_PANIC_MARKER);
        Self { step_delay, context_length, panic_marker, kv: None }
    }

    /// Keep a stand-in KV cache of `blocks` blocks of `block_size` positions.
    pub fn with_kv(mut self, blocks: usize, block_size: usize) -> Self {
        let n = blocks * block_size;
        let kv = TestKv { block_size, keys: vec![u32::MAX; n], values: vec![u32::MAX; n] };
        self.kv = Some(Arc::new(TestPool { block_size, kv: Mutex::new(kv) }));
        self
    }
}

/// The stand-in KV cache as a device pool: test workers of one process copy blocks into each
/// other's, as CUDA workers of one process do (`DevicePool`), so the worker's device path runs
/// without a GPU.
#[derive(Debug)]
pub struct TestPool {
    block_size: usize,
    kv: Mutex<TestKv>,
}

impl TestPool {
    fn lock(&self) -> MutexGuard<'_, TestKv> {
        self.kv.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DevicePool for TestPool {
    fn place(&self) -> String {
        "test".into()
    }

    fn reaches(&self, to: &dyn DevicePool) -> bool {
        to.as_any().downcast_ref::<TestPool>().is_some_and(|t| t.block_size == self.block_size)
    }

    fn copy_to(&self, src: &[BlockId], to: &dyn DevicePool, dst: &[BlockId]) -> Result<(), ExecutorError> {
        let to = to
            .as_any()
            .downcast_ref::<TestPool>()
            .filter(|t| t.block_size == self.block_size)
            .ok_or_else(|| ExecutorError::Blocks(format!("the test pool cannot copy into {}", to.place())))?;
        if src.len() != dst.len() {
            return Err(ExecutorError::Blocks(format!("{} blocks into {}", src.len(), dst.len())));
        }
        // Read, let go, then write: two pools copying into each other never wait on each other.
        let blocks: Vec<(Vec<u32>, Vec<u32>)> = {
            let kv = self.lock();
            src.iter()
                .map(|&b| kv.block(b).map(|r| (kv.keys[r.clone()].to_vec(), kv.values[r].to_vec())))
                .collect::<Result<_, _>>()?
        };
        let mut kv = to.lock();
        for (&b, (k, v)) in dst.iter().zip(blocks) {
            let r = kv.block(b)?;
            kv.keys[r.clone()].copy_from_slice(&k);
            kv.values[r].copy_from_slice(&v);
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl TestKv {
    /// Check the positions already computed, then record the new ones.
    fn step(&mut self, seq: &SequenceView<'_>) -> Result<(), ExecutorError> {
        let bs = self.block_size;
        let at = |pos: usize| seq.blocks.get(pos / bs).map(|b| b.0 as usize * bs + pos % bs);
        for pos in 0..seq.start {
            let i = at(pos).ok_or_else(|| ExecutorError::Forward(format!("no block for position {pos}")))?;
            if self.keys.get(i) != Some(&seq.tokens[pos]) || self.values.get(i) != Some(&(pos as u32)) {
                return Err(ExecutorError::Forward(format!(
                    "KV at position {pos} holds token {:?}, the sequence has {}",
                    self.keys.get(i),
                    seq.tokens[pos]
                )));
            }
        }
        for pos in seq.start..seq.tokens.len() {
            let i = at(pos).filter(|&i| i < self.keys.len());
            let i = i.ok_or_else(|| ExecutorError::Forward(format!("no block for position {pos}")))?;
            self.keys[i] = seq.tokens[pos];
            self.values[i] = pos as u32;
        }
        Ok(())
    }

    fn block(&self, block: BlockId) -> Result<std::ops::Range<usize>, ExecutorError> {
        let at = block.0 as usize * self.block_size;
        if at + self.block_size > self.keys.len() {
            return Err(ExecutorError::Blocks(format!("block {} is outside the pool", block.0)));
        }
        Ok(at..at + self.block_size)
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The test model's next-token logits after `tokens`: a function of their count and the last four.
fn logits_after(tokens: &[u32], prompt_len: usize, vocab: usize) -> Vec<f32> {
    let ctx = &tokens[tokens.len().saturating_sub(4)..];
    let h = ctx.iter().fold(mix(tokens.len() as u64), |h, &t| mix(h ^ u64::from(t)));
    let mut logits = vec![f32::NEG_INFINITY; vocab];
    for id in FIRST_WORD..vocab as u32 {
        logits[id as usize] = (mix(h ^ u64::from(id)) % 1000) as f32 / 100.0;
    }
    // Bytes are possible but never likely (e^-20 against the words'), so that a constraint that
    // allows only bytes (a JSON brace, a digit) still has a choice among them.
    for id in 0..BYTES {
        logits[id as usize] = -30.0 + (mix(h ^ u64::from(id)) % 1000) as f32 / 100.0;
    }
    let generated = tokens.len().saturating_sub(prompt_len) as f32;
    logits[IM_END as usize] = 6.0 + 0.08 * generated;
    logits
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
        if let Some(pool) = &self.kv {
            let mut kv = pool.lock();
            for seq in batch {
                kv.step(seq)?;
            }
        }
        Ok(batch
            .iter()
            .map(|seq| {
                if seq.start == 0 && seq.tokens.windows(self.panic_marker.len()).any(|w| w == self.panic_marker) {
                    panic!("test executor: the prompt asked for a panic");
                }
                let rows = seq.logit_rows();
                if rows == 0 {
                    return None;
                }
                let end = seq.tokens.len();
                Some(
                    (end + 1 - rows..=end)
                        .flat_map(|len| logits_after(&seq.tokens[..len], seq.prompt_len, vocab))
                        .collect(),
                )
            })
            .collect())
    }

    fn block_layout(&self) -> Option<BlockLayout> {
        let kv = self.kv.as_ref()?;
        Some(BlockLayout { layers: 1, block_size: kv.block_size as u32, kv_width: 1, dtype_bytes: 4 })
    }

    fn device_pool(&self) -> Option<Arc<dyn DevicePool>> {
        self.kv.clone().map(|p| p as Arc<dyn DevicePool>)
    }

    fn model_fingerprint(&self) -> u64 {
        mix(u64::from_le_bytes(*b"armtest1"))
    }

    fn export_block(&self, block: BlockId, out: &mut [u8]) -> Result<(), ExecutorError> {
        let layout = self.block_layout().ok_or_else(|| ExecutorError::Blocks("no KV store".into()))?;
        crate::executor::check_block_len(&layout, out.len())?;
        let kv = self.kv.as_ref().expect("layout implies a store").lock();
        let r = kv.block(block)?;
        let words = kv.keys[r.clone()].iter().chain(&kv.values[r]);
        for (dst, w) in out.chunks_exact_mut(4).zip(words) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        Ok(())
    }

    fn import_block(&mut self, block: BlockId, data: &[u8]) -> Result<(), ExecutorError> {
        let layout = self.block_layout().ok_or_else(|| ExecutorError::Blocks("no KV store".into()))?;
        crate::executor::check_block_len(&layout, data.len())?;
        let mut kv = self.kv.as_ref().expect("layout implies a store").lock();
        let r = kv.block(block)?;
        let words: Vec<u32> = data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let (k, v) = words.split_at(kv.block_size);
        kv.keys[r.clone()].copy_from_slice(k);
        kv.values[r].copy_from_slice(v);
        Ok(())
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
        SequenceView { tokens: t, start: 0, prompt_len: t.len(), blocks: &[], wants_logits: true, all_logits: false }
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
        assert_eq!(l[256..259].iter().filter(|l| l.is_finite()).count(), 1, "only end-of-turn among specials");
        // Bytes are possible, never likely: below every word.
        let lowest_word = l[259..].iter().copied().fold(f32::INFINITY, f32::min);
        assert!(l[..256].iter().all(|&b| b.is_finite() && b < -19.0 && b < lowest_word));
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
