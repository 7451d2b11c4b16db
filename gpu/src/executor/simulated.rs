//! The simulated executor: a timing model in place of the forward pass, for the simulator. It
//! never sleeps; it reports how long each step would have taken, and its logits always favour the
//! same ordinary token, so a sequence runs to its `max_tokens` as trace replays expect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Executor, ExecutorError, ModelInfo, SequenceView};

/// Step time: prefill ms = `a·T² + b·T + c` over the step's prefill tokens T, plus decode ms =
/// `d0 + d1·B + d2·K` for B decoding sequences reading K tokens of KV in total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimingModel {
    pub prefill_a: f64,
    pub prefill_b: f64,
    pub prefill_c: f64,
    pub decode_base: f64,
    pub decode_per_seq: f64,
    pub decode_per_kv_token: f64,
}

impl TimingModel {
    /// Milliseconds for one step over `batch`.
    pub fn step_ms(&self, batch: &[SequenceView<'_>]) -> f64 {
        let (mut prefill_tokens, mut decodes, mut kv_tokens) = (0usize, 0usize, 0usize);
        for s in batch {
            let new = s.tokens.len() - s.start;
            if s.start >= s.prompt_len && new == 1 {
                decodes += 1;
                kv_tokens += s.tokens.len();
            } else {
                prefill_tokens += new;
            }
        }
        let t = prefill_tokens as f64;
        let prefill =
            if prefill_tokens > 0 { self.prefill_a * t * t + self.prefill_b * t + self.prefill_c } else { 0.0 };
        let decode = if decodes > 0 {
            self.decode_base + self.decode_per_seq * decodes as f64 + self.decode_per_kv_token * kv_tokens as f64
        } else {
            0.0
        };
        prefill + decode
    }
}

#[derive(Debug)]
pub struct SimulatedExecutor {
    timing: TimingModel,
    vocab_size: usize,
    context_length: u32,
    /// The token every step prefers.
    token: u32,
    elapsed: Duration,
    /// Nanoseconds of the last step, shared with whoever drives the engine that owns this
    /// executor (`step_clock`).
    last_step: Arc<AtomicU64>,
}

/// Reads the simulated duration of an executor's last step from outside the engine that owns it.
#[derive(Clone, Debug, Default)]
pub struct StepClock(Arc<AtomicU64>);

impl StepClock {
    pub fn last_step(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

impl SimulatedExecutor {
    pub fn new(timing: TimingModel, vocab_size: usize, context_length: u32, token: u32) -> Self {
        assert!((token as usize) < vocab_size, "the preferred token must be in the vocabulary");
        Self { timing, vocab_size, context_length, token, elapsed: Duration::ZERO, last_step: Arc::default() }
    }

    /// Simulated duration of the last step.
    pub fn last_step(&self) -> Duration {
        Duration::from_nanos(self.last_step.load(Ordering::Relaxed))
    }

    /// A handle on `last_step` that stays valid once the executor is boxed into an engine.
    pub fn step_clock(&self) -> StepClock {
        StepClock(self.last_step.clone())
    }

    /// Simulated time of every step so far.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

impl Executor for SimulatedExecutor {
    fn info(&self) -> ModelInfo {
        ModelInfo { name: "simulated".into(), vocab_size: self.vocab_size, context_length: self.context_length }
    }

    fn forward(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<Option<Vec<f32>>>, ExecutorError> {
        let step = Duration::from_secs_f64(self.timing.step_ms(batch).max(0.0) / 1000.0);
        self.last_step.store(step.as_nanos() as u64, Ordering::Relaxed);
        self.elapsed += step;
        Ok(batch
            .iter()
            .map(|s| {
                let mut row = vec![0.0; self.vocab_size];
                row[self.token as usize] = 1.0;
                (s.logit_rows() > 0).then(|| row.repeat(s.logit_rows()))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: TimingModel = TimingModel {
        prefill_a: 0.001,
        prefill_b: 0.1,
        prefill_c: 5.0,
        decode_base: 8.0,
        decode_per_seq: 0.5,
        decode_per_kv_token: 0.01,
    };

    fn view(tokens: &[u32], start: usize, prompt_len: usize) -> SequenceView<'_> {
        SequenceView { tokens, start, prompt_len, blocks: &[], wants_logits: true, all_logits: false }
    }

    #[test]
    fn step_time_follows_the_model() {
        let prompt: Vec<u32> = vec![1; 100];
        // Prefill of 100 tokens: 0.001·100² + 0.1·100 + 5 = 25 ms.
        assert!((TIMING.step_ms(&[view(&prompt, 0, 100)]) - 25.0).abs() < 1e-9);
        // Two decodes over 101 and 51 tokens of KV: 8 + 0.5·2 + 0.01·152 = 10.52 ms.
        let a: Vec<u32> = vec![1; 101];
        let b: Vec<u32> = vec![1; 51];
        let ms = TIMING.step_ms(&[view(&a, 100, 100), view(&b, 50, 40)]);
        assert!((ms - 10.52).abs() < 1e-9, "{ms}");
        // Mixed: both terms add.
        let mixed = TIMING.step_ms(&[view(&prompt, 0, 100), view(&a, 100, 100)]);
        assert!((mixed - (25.0 + 8.0 + 0.5 + 1.01)).abs() < 1e-9, "{mixed}");
    }

    #[test]
    fn forward_keeps_virtual_time_and_prefers_one_token() {
        let mut e = SimulatedExecutor::new(TIMING, 10, 4096, 3);
        let prompt: Vec<u32> = vec![1; 100];
        let out = e.forward(&[view(&prompt, 0, 100)]).unwrap();
        assert_eq!(crate::sampling::argmax(out[0].as_ref().unwrap()), 3);
        assert_eq!(e.last_step(), Duration::from_millis(25));
        e.forward(&[view(&prompt, 0, 100)]).unwrap();
        assert_eq!(e.elapsed(), Duration::from_millis(50));
    }
}
