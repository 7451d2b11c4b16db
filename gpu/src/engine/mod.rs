//! The continuous-batching engine core: admits waiting requests into a running batch (FIFO, up to
//! `max_batch`), runs one forward step for the whole batch, samples, detokenizes, applies stop
//! strings and limits, and reports stream events. No threads or clocks inside; `thread.rs` drives it.

mod thread;

use std::collections::VecDeque;
use std::sync::Arc;

use runtime::ids::RequestId;
use runtime::request::{FinishReason, GenerateRequest, StreamEvent, Usage};

use crate::executor::{Executor, ExecutorError, SequenceView};
use crate::sampling::Sampler;
use crate::stop::StopMatcher;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

pub use thread::{EngineHandle, Outputs, Taken};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineLimits {
    pub max_batch: usize,
    pub max_queue: usize,
    pub context_length: u32,
}

struct Sequence {
    id: RequestId,
    tokens: Vec<u32>,
    prompt_len: usize,
    max_tokens: u32,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    /// Tokens generated since the last text was emitted.
    unreported: u32,
}

impl Sequence {
    fn generated(&self) -> u32 {
        (self.tokens.len() - self.prompt_len) as u32
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len as u32,
            completion_tokens: self.generated(),
        }
    }
}

pub struct Engine {
    executor: Box<dyn Executor>,
    tokenizer: Arc<dyn Tokenizer>,
    limits: EngineLimits,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
}

impl Engine {
    pub fn new(
        executor: Box<dyn Executor>,
        tokenizer: Arc<dyn Tokenizer>,
        limits: EngineLimits,
    ) -> Self {
        Self {
            executor,
            tokenizer,
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// Why a request can never run here, if it cannot.
    pub fn check(limits: &EngineLimits, req: &GenerateRequest) -> Result<(), String> {
        if req.prompt_tokens.is_empty() {
            return Err("the prompt is empty".into());
        }
        if req.prompt_tokens.len() >= limits.context_length as usize {
            return Err(format!(
                "the prompt has {} tokens; this model's context length is {}",
                req.prompt_tokens.len(),
                limits.context_length
            ));
        }
        Ok(())
    }

    /// Queue a request. Returns an immediate failure event when it can never run.
    pub fn submit(&mut self, req: GenerateRequest) -> Option<StreamEvent> {
        if let Err(reason) = Self::check(&self.limits, &req) {
            return Some(StreamEvent::Failed(
                runtime::request::WorkerFailure::Invalid(reason),
            ));
        }
        let prompt_len = req.prompt_tokens.len();
        self.waiting.push_back(Sequence {
            id: req.id,
            max_tokens: req.sampling.max_tokens.max(1),
            sampler: Sampler::new(&req.sampling),
            stop: StopMatcher::new(&req.sampling.stop),
            tokens: req.prompt_tokens,
            prompt_len,
            decoder: IncrementalDecoder::default(),
            unreported: 0,
        });
        None
    }

    /// Drop a request wherever it is. Returns whether it was known.
    pub fn cancel(&mut self, id: &RequestId) -> bool {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|s| &s.id != id);
        self.running.retain(|s| &s.id != id);
        before != self.waiting.len() + self.running.len()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// One engine iteration: admit, forward the batch, sample one token per sequence.
    pub fn step(&mut self) -> Result<Vec<(RequestId, StreamEvent)>, ExecutorError> {
        while self.running.len() < self.limits.max_batch {
            match self.waiting.pop_front() {
                Some(seq) => self.running.push(seq),
                None => break,
            }
        }
        if self.running.is_empty() {
            return Ok(Vec::new());
        }
        let views: Vec<SequenceView<'_>> = self
            .running
            .iter()
            .map(|s| SequenceView {
                tokens: &s.tokens,
                prompt_len: s.prompt_len,
            })
            .collect();
        let logits = self.executor.forward(&views)?;
        if logits.len() != self.running.len() {
            return Err(ExecutorError::Forward(format!(
                "{} logit rows for a batch of {}",
                logits.len(),
                self.running.len()
            )));
        }
        let mut events = Vec::new();
        let mut finished = Vec::new();
        for (i, (seq, row)) in self.running.iter_mut().zip(logits).enumerate() {
            let token = seq.sampler.sample(&row);
            seq.tokens.push(token);
            seq.unreported += 1;
            let tok = &*self.tokenizer;
            let reason = if tok.eos_tokens().contains(&token) {
                Some(FinishReason::Stop)
            } else {
                let text = seq.decoder.push(tok, token);
                let out = seq.stop.push(&text);
                emit(&mut events, seq, out.emit);
                if out.stopped {
                    Some(FinishReason::Stop)
                } else if seq.generated() >= seq.max_tokens
                    || seq.tokens.len() >= self.limits.context_length as usize
                {
                    Some(FinishReason::Length)
                } else {
                    None
                }
            };
            if let Some(reason) = reason {
                if !matches!(reason, FinishReason::Stop) || tok.eos_tokens().contains(&token) {
                    let tail = seq.decoder.finish();
                    let mut rest = seq.stop.push(&tail).emit;
                    rest.push_str(&seq.stop.finish());
                    emit(&mut events, seq, rest);
                }
                events.push((
                    seq.id.clone(),
                    StreamEvent::Finished {
                        reason,
                        usage: seq.usage(),
                    },
                ));
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            self.running.swap_remove(i);
        }
        Ok(events)
    }
}

fn emit(events: &mut Vec<(RequestId, StreamEvent)>, seq: &mut Sequence, text: String) {
    if !text.is_empty() {
        events.push((
            seq.id.clone(),
            StreamEvent::Delta {
                text,
                tokens: seq.unreported,
            },
        ));
        seq.unreported = 0;
    }
}

#[cfg(test)]
mod tests;
