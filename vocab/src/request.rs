//! What a gateway asks a worker to generate, and what comes back, as plain serializable types.

use serde::{Deserialize, Serialize};

use crate::ids::RequestId;

/// How to pick tokens. Produced by the gateway from OpenAI parameters, already validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1].
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: u32,
    /// Seed of this request's sampler; the gateway picks one when the client gives none.
    pub seed: u64,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Generation ends before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks want fixed lengths).
    #[serde(default)]
    pub ignore_eos: bool,
    /// OpenAI's: subtracted from the logit of every token generated so far, once (presence) or
    /// once per occurrence (frequency); in [-2, 2], 0 for none.
    #[serde(default)]
    pub presence_penalty: f32,
    #[serde(default)]
    pub frequency_penalty: f32,
    /// vLLM's and llama.cpp's multiplicative penalty on every token of the prompt and of the
    /// output so far: a positive logit is divided by it, a negative one multiplied; 1 for none.
    #[serde(default = "no_repetition_penalty")]
    pub repetition_penalty: f32,
    /// Drop tokens whose probability is under `min_p` times the most likely one's; 0 for none.
    #[serde(default)]
    pub min_p: f32,
    /// Added to the logits of these token ids (OpenAI's `logit_bias`, in [-100, 100]).
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each generated token's log probability and this many most likely alternatives
    /// (0–20); None reports none.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Score the prompt: each prompt token after the first gets its log probability given the
    /// tokens before it, with this many alternatives (0–20), in one `StreamEvent::Scored`. The
    /// worker then computes the whole prompt (its cached prefix cannot say what it would have
    /// predicted), and computes it itself (never on a prefill worker).
    #[serde(default)]
    pub prompt_logprobs: Option<u32>,
    /// What the output must match (structured outputs); None for free text.
    #[serde(default)]
    pub constraint: Option<Box<Constraint>>,
    /// Scheduling, not sampling: the caller's API-key priority. A worker admits waiting
    /// sequences of higher priority first (then those whose prompt is cached, then by arrival).
    #[serde(default)]
    pub priority: i32,
}

fn no_repetition_penalty() -> f32 {
    1.0
}

impl SamplingParams {
    /// Whether the logits are changed before a token is chosen (penalties, bias).
    pub fn changes_logits(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
            || !self.logit_bias.is_empty()
    }

    /// Whether the logits are changed (`changes_logits`) or the candidates cut by `min_p`: then
    /// only the host's sampler can choose.
    pub fn adjusts_logits(&self) -> bool {
        self.changes_logits() || self.min_p > 0.0
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            max_tokens: 16,
            stop: Vec::new(),
            ignore_eos: false,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            min_p: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
            prompt_logprobs: None,
            constraint: None,
            priority: 0,
        }
    }
}

/// A constraint on a request's output, compiled on the worker (by llguidance) into a matcher that
/// masks each step's logits: only tokens that keep the output matching can be chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    pub grammar: Grammar,
    /// Tokens already generated under it by an earlier attempt (a migrated request's, now part
    /// of its prompt): the new worker's matcher consumes them first.
    #[serde(default)]
    pub consumed: Vec<u32>,
}

/// What the output must match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grammar {
    /// A JSON schema, as JSON text.
    JsonSchema(String),
    /// Any JSON object.
    JsonObject,
    /// A regular expression the whole output matches.
    Regex(String),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

impl Constraint {
    pub fn new(grammar: Grammar) -> Self {
        Self { grammar, consumed: Vec::new() }
    }
}

/// A request as a worker sees it: tokens in, tokens out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub id: RequestId,
    /// The client's `x-request-id`, carried for logs on every node the request touches.
    #[serde(default)]
    pub tag: Option<String>,
    /// The trace it belongs to (W3C trace context), so that the spans of every node it touches
    /// join the client's trace; None when it is not traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingParams,
}

/// A span's W3C trace context (`traceparent` and `tracestate`, as the HTTP headers spell them),
/// carried in the messages a request's work crosses nodes with. The receiving node parses it
/// again (`runtime::trace`): one it cannot read starts no parent, as the W3C spec says of a bad
/// header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

/// A request as the gateway hands it to its decode (or aggregated) worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub request: GenerateRequest,
    /// The router chose disaggregation: this prefill worker computes the prompt's uncached
    /// blocks and sends them over.
    #[serde(default)]
    pub prefill_from: Option<crate::ids::WorkerId>,
    /// The router found more of the prompt in a cache tier than on the worker.
    #[serde(default)]
    pub onboard: Option<crate::kv::OnboardHint>,
}

/// A decode worker asks a prefill worker for the KV of `tokens` (whole blocks), to be sent to
/// it as transfer `transfer`, skipping the first `skip` blocks it already has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillRequest {
    pub id: RequestId,
    pub transfer: u64,
    pub tokens: Vec<u32>,
    pub skip: u32,
    /// The decode worker's node and data-plane address.
    pub to_node: String,
    pub to_addr: String,
    /// What the decode worker runs: blocks move only between equal models and layouts.
    pub model: u64,
    pub layout: crate::kv::BlockLayout,
    /// The decode worker's transfer span, which the prefill worker's spans join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// How a prefill for another worker ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefillReply {
    /// Every block from `skip` on was sent (`blocks` of them).
    Sent {
        blocks: u32,
    },
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence.
    Stop,
    /// The request's stop string of this index (in `SamplingParams::stop`) was generated.
    StopSequence(u32),
    /// `max_tokens` or the context length was reached.
    Length,
    /// The client went away or the request was cancelled.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopSequence(_) | FinishReason::Cancelled => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose KV the worker found in its pool when it admitted the request (a
    /// cached prefix, or blocks that came from a prefill worker or a cache tier) instead of
    /// computing them.
    #[serde(default)]
    pub cached_tokens: u32,
}

/// Why a worker could not finish a request, classified by what the caller should do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WorkerFailure {
    /// The worker or its engine died; another worker may succeed.
    #[error("worker failed: {0}")]
    Crashed(String),
    /// The worker does not know this request (it restarted, or the request finished long ago).
    #[error("the worker does not know request {0}")]
    UnknownRequest(String),
    /// The request itself cannot be served (too long for the context, for example).
    #[error("{0}")]
    Invalid(String),
}

impl WorkerFailure {
    /// Whether placing the request again elsewhere may succeed.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, WorkerFailure::Invalid(_))
    }
}

/// One step of a request's output stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// New text, and how many tokens produced it (text may lag tokens at a UTF-8 or stop-string edge).
    Delta {
        text: String,
        tokens: u32,
        /// Those tokens' ids (`tokens` of them): what a gateway needs to continue the request on
        /// another worker if this one dies (migration).
        #[serde(default)]
        ids: Vec<u32>,
        /// Their log probabilities, one per id, when the request asked for them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        logprobs: Vec<TokenLogprob>,
    },
    /// The prompt's log probabilities, when the request asked for them (`prompt_logprobs`): its
    /// first token, which has none, and an entry for each token after it, in order. Comes once,
    /// before the first `Delta`.
    Scored {
        first: u32,
        logprobs: Vec<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
    Failed(WorkerFailure),
}

/// A generated token's log probability under the model's distribution (raw logits, before any
/// bias, penalty or temperature), and the most likely tokens with theirs, most likely first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    /// Minus infinity for a token the logits rule out (sent as `null`: JSON has no infinity).
    #[serde(with = "neg_infinity_as_null")]
    pub logprob: f32,
    #[serde(default)]
    pub top: Vec<(u32, f32)>,
}

/// An `f32` that may be minus infinity, on the JSON control plane: `null` stands for it.
mod neg_infinity_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() { s.serialize_f32(*v) } else { s.serialize_none() }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NEG_INFINITY))
    }
}

impl StreamEvent {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, StreamEvent::Delta { .. } | StreamEvent::Scored { .. })
    }
}

/// A worker's answer to a submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Admission {
    Accepted,
    /// The worker's queue is full; try later or elsewhere.
    Overloaded {
        queued: u32,
    },
    /// The worker is failing or stopping; another worker may take it.
    Unavailable(String),
    /// The request can never run here.
    Rejected(String),
}

/// Ask for a request's new output, waiting up to `max_wait` for some.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollRequest {
    pub id: RequestId,
    pub max_wait_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct PollReply {
    pub events: Vec<StreamEvent>,
}

#[cfg(feature = "wire")]
crate::wire_message!(
    GenerateRequest,
    PollRequest,
    PollReply,
    Admission,
    RequestId,
    Submission,
    PrefillRequest,
    PrefillReply
);
#[cfg(feature = "wire")]
crate::wire_message!(crate::config::WorkerRole);
