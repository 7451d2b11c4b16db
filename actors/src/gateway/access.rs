//! The access log: one structured line per finished inference request, at `info` under the
//! target `armature::access` (`RUST_LOG=info,armature::access=off` turns it off). A request with
//! `n` choices writes one line per choice, each under its own id and the same `tag`. Requests
//! refused before they reach a worker's queue (a bad body, a missing key, a limit) are answered
//! with their error and not logged here.
//!
//! Fields (JSON logs, `telemetry.log_format = "json"`, flatten them into the line's object):
//! `request`, `tag` (the client's `x-request-id`, or the one the gateway gave it), `path`, `model`, `key` (the API key's id,
//! never the key), `prompt_tokens`, `completion_tokens` (those delivered, for a request that ended
//! early), `cached_tokens`, `ttft_ms` (absent when
//! no token came), `duration_ms`, `worker` (the last one placed on), `prefill` (the prefill worker
//! of a disaggregated attempt), `workers` (every worker placed on, in order), `attempts`,
//! `migrations`, `outcome`: `stop`, `length`, `stop_sequence`, `client_gone`, or `failed` with
//! `error` naming the kind (`unavailable`, `queue_timeout`, `overloaded`, `invalid`), and
//! `trace_id` when the request's spans are exported (`telemetry.otlp_endpoint`).

use std::time::{Duration, Instant};

use policy::lifecycle::Failure;
use runtime::ids::{RequestId, WorkerId};
use runtime::request::{FinishReason, Usage};

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Finished(FinishReason),
    ClientGone,
    Failed(&'static str),
}

impl Outcome {
    pub fn of_failure(f: &Failure) -> Self {
        Self::Failed(match f {
            Failure::Unavailable(_) => "unavailable",
            Failure::Queued { .. } => "queue_timeout",
            Failure::Overloaded { .. } => "overloaded",
            Failure::Invalid(_) => "invalid",
        })
    }

    fn label(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::Finished(FinishReason::Stop) => ("stop", None),
            Self::Finished(FinishReason::StopSequence(_)) => ("stop_sequence", None),
            Self::Finished(FinishReason::Length) => ("length", None),
            Self::Finished(FinishReason::Cancelled) | Self::ClientGone => ("client_gone", None),
            Self::Failed(kind) => ("failed", Some(kind)),
        }
    }
}

/// What the access line of one request collects, from its arrival to its end.
#[derive(Clone, Debug)]
pub struct Access {
    pub started: Instant,
    pub path: String,
    pub model: String,
    /// The caller's key id.
    pub key: Option<String>,
    /// The client's prompt, for a request that ends without usage.
    pub prompt_tokens: u32,
    pub first_token: Option<Instant>,
    pub usage: Option<Usage>,
    /// Workers placed on, in order, without repeats in a row.
    pub workers: Vec<WorkerId>,
    pub prefill: Option<WorkerId>,
    pub outcome: Option<Outcome>,
    /// The request's span (`gateway.generate`): the line names its trace, and the span gets the
    /// line's outcome and counts.
    pub span: tracing::Span,
}

impl Access {
    pub fn new(started: Instant, path: String, model: String, key: Option<String>, prompt_tokens: u32) -> Self {
        let (first_token, usage, workers, prefill, outcome) = (None, None, Vec::new(), None, None);
        let span = tracing::Span::none();
        Self { started, path, model, key, prompt_tokens, first_token, usage, workers, prefill, outcome, span }
    }

    /// The request's span.
    pub fn traced(mut self, span: tracing::Span) -> Self {
        self.span = span;
        self
    }

    pub fn placed(&mut self, worker: &WorkerId, prefill: Option<&WorkerId>) {
        if self.workers.last() != Some(worker) {
            self.workers.push(worker.clone());
        }
        if prefill.is_some() {
            self.prefill = prefill.cloned();
        }
    }

    /// The first outcome stands (a client that leaves after a failure was answered is not news).
    pub fn ended(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }

    /// Write the line; `delivered` tokens reached the client (the completion, for a request that
    /// ended without usage).
    pub fn log(&self, id: &RequestId, tag: Option<&str>, attempts: u32, migrations: u32, delivered: u32, now: Instant) {
        let (outcome, error) = self.outcome.unwrap_or(Outcome::ClientGone).label();
        let usage = self.usage.unwrap_or(Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: delivered,
            cached_tokens: 0,
        });
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let workers: Vec<String> = self.workers.iter().map(ToString::to_string).collect();
        tracing::info!(
            target: "armature::access",
            request = %id,
            tag,
            path = %self.path,
            model = %self.model,
            key = self.key.as_deref(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            cached_tokens = usage.cached_tokens,
            ttft_ms = self.first_token.map(|t| ms(t - self.started)),
            duration_ms = ms(now - self.started),
            worker = self.workers.last().map(ToString::to_string),
            prefill = self.prefill.as_ref().map(ToString::to_string),
            workers = workers.join(","),
            attempts,
            migrations,
            outcome,
            error,
            trace_id = runtime::trace::trace_id(&self.span),
            "access"
        );
        let span = &self.span;
        span.record("completion_tokens", usage.completion_tokens);
        span.record("cached_tokens", usage.cached_tokens);
        span.record("attempts", attempts);
        span.record("migrations", migrations);
        span.record("outcome", outcome);
        if error.is_some() {
            span.record("otel.status_code", "ERROR");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_labelled_and_the_first_one_stands() {
        assert_eq!(Outcome::Finished(FinishReason::StopSequence(2)).label(), ("stop_sequence", None));
        assert_eq!(Outcome::of_failure(&Failure::Invalid("x".into())).label(), ("failed", Some("invalid")));
        let mut a = Access::new(Instant::now(), "/v1/completions".into(), "m".into(), None, 5);
        a.ended(Outcome::Finished(FinishReason::Length));
        a.ended(Outcome::ClientGone);
        assert_eq!(a.outcome, Some(Outcome::Finished(FinishReason::Length)));
        let w = |node: &str| WorkerId { node: node.into(), device: "cpu".into() };
        let (w0, w1) = (w("n0"), w("n1"));
        a.placed(&w0, None);
        a.placed(&w0, None);
        a.placed(&w1, Some(&w0));
        assert_eq!(a.workers, vec![w0.clone(), w1]);
        assert_eq!(a.prefill, Some(w0));
    }
}
