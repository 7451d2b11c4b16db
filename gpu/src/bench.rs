//! `armature bench engine`: the engine and an executor measured directly, without HTTP: prefill
//! throughput for one long prompt, and decode throughput at several concurrencies; with a
//! constraint, decode again with it on every sequence, beside the free runs of the same repeat.

use std::sync::Arc;
use std::time::Instant;

use runtime::ids::RequestId;
use runtime::request::{Constraint, GenerateRequest, SamplingParams, StreamEvent};
use serde::Serialize;

use crate::engine::{Engine, EngineLimits};
use crate::executor::Executor;
use crate::model::ModelError;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug)]
pub struct EngineBench {
    pub concurrency: Vec<usize>,
    /// Prompt length of each decoding sequence.
    pub prompt_tokens: usize,
    /// Tokens generated per sequence (end-of-sequence ignored).
    pub max_tokens: u32,
    /// Prompt length of the prefill measurement.
    pub prefill_tokens: usize,
    pub repeats: usize,
    pub block_size: usize,
    /// Decode each concurrency again with this constraint on every sequence.
    pub constraint: Option<Constraint>,
    /// Every sequence's temperature (0: greedy) and top-p: sampling runs on the engine thread
    /// between forward passes, so it is part of the decode rate.
    pub temperature: f32,
    pub top_p: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct DecodeFigure {
    pub concurrency: usize,
    /// Median over repeats of generated tokens per second, all sequences together.
    pub aggregate_tok_s: f64,
    pub per_stream_tok_s: f64,
    /// With the constraint: median aggregate tok/s, its ratio to the free runs (the median of
    /// each repeat's ratio), and the mean time of one sequence's mask (computed beside the
    /// forward pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constrained_tok_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constrained_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_us: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EngineReport {
    pub prefill_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode: Vec<DecodeFigure>,
    pub threads: usize,
}

/// Makes a fresh executor (with its own KV cache of the given number of blocks) and tokenizer.
pub type Loader<'a> = &'a mut dyn FnMut(usize) -> Result<(Box<dyn Executor>, Arc<dyn Tokenizer>), ModelError>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn prompt(tokenizer: &dyn Tokenizer, i: usize, len: usize) -> Vec<u32> {
    let text = format!("Request {i}. The quick brown fox jumps over the lazy dog near the river bank at dawn. ")
        .repeat(len / 8 + 2);
    let mut ids = tokenizer.encode(&text);
    ids.truncate(len);
    ids
}

fn request(
    id: usize,
    prompt_tokens: Vec<u32>,
    max_tokens: u32,
    bench: &EngineBench,
    constraint: Option<&Constraint>,
) -> GenerateRequest {
    GenerateRequest {
        id: RequestId(format!("bench-{id}")),
        tag: None,
        trace: None,
        prompt_tokens,
        sampling: SamplingParams {
            max_tokens,
            ignore_eos: true,
            temperature: bench.temperature,
            top_p: bench.top_p,
            seed: id as u64,
            constraint: constraint.cloned().map(Box::new),
            ..Default::default()
        },
    }
}

impl EngineBench {
    fn limits(&self, batch: usize, tokens: usize, context: u32) -> EngineLimits {
        let blocks = batch * tokens.div_ceil(self.block_size) + batch;
        EngineLimits {
            max_batch: batch,
            max_queue: batch,
            context_length: context,
            block_size: self.block_size,
            kv_blocks: blocks,
            max_batch_tokens: tokens.max(batch * self.prompt_tokens).max(512),
        }
    }

    pub fn run(&self, load: Loader<'_>) -> Result<EngineReport, ModelError> {
        let mut prefill = Vec::new();
        for _ in 0..self.repeats {
            let limits = self.limits(1, self.prefill_tokens + 1, 1 << 20);
            let (exec, tok) = load(limits.kv_blocks)?;
            let limits = EngineLimits { context_length: exec.info().context_length, ..limits };
            // A prompt the engine refuses would finish at once and read as an absurd rate.
            if self.prefill_tokens + 1 > limits.context_length as usize {
                return Err(ModelError::Metadata(format!(
                    "a prefill of {} tokens and one generated does not fit the model's context of {} (--prefill-tokens)",
                    self.prefill_tokens, limits.context_length
                )));
            }
            let mut engine = Engine::new(exec, tok.clone(), limits);
            engine.submit(request(0, prompt(&*tok, 0, self.prefill_tokens), 1, self, None));
            let start = Instant::now();
            while engine.has_work() {
                engine.step().map_err(|e| ModelError::Metadata(e.to_string()))?;
            }
            prefill.push(self.prefill_tokens as f64 / start.elapsed().as_secs_f64());
        }
        let mut decode = Vec::new();
        for &c in &self.concurrency {
            let (mut free, mut constrained, mut ratios, mut mask_us) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..self.repeats {
                let (tok_s, _) = self.decode_once(c, None, load)?;
                free.push(tok_s);
                if let Some(constraint) = &self.constraint {
                    let (with, stats) = self.decode_once(c, Some(constraint), load)?;
                    constrained.push(with);
                    ratios.push(with / tok_s);
                    mask_us.push(stats.mask_micros as f64 / stats.masks.max(1) as f64);
                }
            }
            let aggregate = median(free);
            let some = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
            decode.push(DecodeFigure {
                concurrency: c,
                aggregate_tok_s: aggregate,
                per_stream_tok_s: aggregate / c as f64,
                constrained_tok_s: some(constrained),
                constrained_ratio: some(ratios),
                mask_us: some(mask_us),
            });
        }
        Ok(EngineReport {
            prefill_tokens: self.prefill_tokens,
            prefill_tok_s: median(prefill),
            decode,
            threads: crate::cpu::threads::threads(),
        })
    }

    /// One decode run of `c` sequences: generated tokens per second after the first step (which
    /// prefills every prompt), and the engine's counters.
    fn decode_once(
        &self,
        c: usize,
        constraint: Option<&Constraint>,
        load: Loader<'_>,
    ) -> Result<(f64, crate::engine::EngineStats), ModelError> {
        let limits = self.limits(c, self.prompt_tokens + self.max_tokens as usize, 1 << 20);
        let (exec, tok) = load(limits.kv_blocks)?;
        let limits = EngineLimits { context_length: exec.info().context_length, ..limits };
        let mut engine = Engine::new(exec, tok.clone(), limits);
        for i in 0..c {
            let req = request(i, prompt(&*tok, i + 1, self.prompt_tokens), self.max_tokens, self, constraint);
            if let Some(StreamEvent::Failed(f)) = engine.submit(req) {
                return Err(ModelError::Metadata(format!("the benchmark's request was refused: {f}")));
            }
        }
        let step = |e: &mut Engine| e.step().map_err(|e| ModelError::Metadata(e.to_string()));
        step(&mut engine)?;
        let start = Instant::now();
        let mut generated = 0u64;
        while engine.has_work() {
            for (_, ev) in step(&mut engine)? {
                if let StreamEvent::Finished { usage, .. } = ev {
                    generated += u64::from(usage.completion_tokens.saturating_sub(1));
                }
            }
        }
        Ok((generated as f64 / start.elapsed().as_secs_f64(), engine.stats()))
    }
}
