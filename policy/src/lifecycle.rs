//! `Lifecycle`: one request's life after validation, as a state machine over `now`. It asks for a
//! placement (avoiding the workers it already failed on), submits, delivers the worker's stream to
//! the client, retries on another worker when one fails before the first token, migrates the
//! request when one fails after it (the prompt plus the tokens delivered so far, fewer still to
//! generate, so the client's stream goes on unbroken), gives up with a typed failure, and cancels
//! when the client leaves. The gateway's driver is a pump around it; the fault simulator drives
//! the same type.
//!
//! Calling order, as in quinn-proto's `Connection`:
//!
//! - after `new` and after every `handle_*` input, drain `poll` until it returns None and carry
//!   out each `Output` (answering `Place` with `handle_placed` and `Submit` with
//!   `handle_admission`, at once or later);
//! - when nothing is in flight, `poll_timeout` says when to call `handle_timeout`;
//! - while `running` names a worker, feed its events to `handle_event` and its failures (a failed
//!   call, a missed lease) to `handle_worker_failed`; `handle_client_gone` when the client leaves.
//!
//! `now` only goes forward. The rules written here and nowhere else: the retry and migration
//! limits and pauses, the stale-output rule (events of an earlier attempt are dropped and their
//! worker told to cancel), and usage counting across attempts (the client's prompt, and every
//! token it received).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use vocab::request::{Admission, FinishReason, GenerateRequest, StreamEvent, Usage, WorkerFailure};

/// The gateway's limits and pauses (`[gateway]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LifecycleConfig {
    /// Placements again after a failure before the first token (`gateway.retries`).
    pub retries: u32,
    /// Moves after the first token (`gateway.migrations`).
    pub migrations: u32,
    /// Pause before placing again: times the retry number before the first token, once after.
    pub retry_pause: Duration,
    /// How long a request waits for any worker to be placed on before it fails.
    pub placement_wait: Duration,
    /// How often it asks again meanwhile.
    pub placement_retry: Duration,
    /// How long an admitted attempt may wait in its worker's queue for its first token before
    /// the request fails (`gateway.queue_timeout`); `None` waits as long as it takes.
    pub queue_timeout: Option<Duration>,
}

impl LifecycleConfig {
    /// The gateway's limits with the product's pauses.
    pub fn new(retries: u32, migrations: u32) -> Self {
        Self {
            retries,
            migrations,
            retry_pause: Duration::from_millis(150),
            placement_wait: Duration::from_secs(3),
            placement_retry: Duration::from_millis(100),
            queue_timeout: None,
        }
    }

    /// The same, failing requests that wait longer than `wait` in a worker's queue.
    pub fn with_queue_timeout(self, wait: Duration) -> Self {
        Self { queue_timeout: Some(wait), ..self }
    }
}

/// Why a request failed, in the client's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No worker could serve it (503): none available, or every try failed.
    Unavailable(String),
    /// The chosen worker's queue is full (429).
    Overloaded { queued: u32 },
    /// The request can never be served (400).
    Invalid(String),
    /// It waited `waited` in a worker's queue without a token (503).
    Queued { waited: Duration },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) | Self::Invalid(why) => f.write_str(why),
            Self::Overloaded { queued } => {
                write!(f, "The server is at capacity ({queued} requests queued on the chosen worker); retry later.")
            }
            Self::Queued { waited } => write!(
                f,
                "The request waited {:.1} s in the worker's queue without starting (gateway.queue_timeout); retry later.",
                waited.as_secs_f64()
            ),
        }
    }
}

/// Something that happened, for metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// An attempt failed before its first token.
    AttemptFailed { attempt: u32, why: String },
    /// Placed again after a failure before the first token.
    Retry,
    /// Moved after its first token.
    Migration { why: String },
    /// The client left while the request ran.
    ClientGone,
    /// An event of an earlier attempt arrived and was dropped.
    Stale,
}

/// What the pump does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Output<W> {
    /// Ask the router for a worker for `request()`, passing over `avoid` while another will do.
    Place {
        avoid: Vec<W>,
    },
    /// Submit `request()` to `worker` as attempt `attempt`.
    Submit {
        worker: W,
        attempt: u32,
    },
    /// Attempt `attempt` was admitted by its worker (it may wait in the worker's queue).
    Admitted {
        attempt: u32,
    },
    /// Attempt `attempt` produced its first token (the router counts it as decode load now).
    FirstToken {
        attempt: u32,
    },
    /// Send this to the client (text, or the end with the whole request's usage).
    Deliver(StreamEvent),
    /// Tell `worker` to drop attempt `attempt`.
    Cancel {
        worker: W,
        attempt: u32,
    },
    /// Attempt `attempt`'s placement is over (the router stops counting its load).
    Ended {
        attempt: u32,
    },
    /// Tell the client the request failed.
    Fail(Failure),
    Note(Note),
    /// Nothing more will happen.
    Done,
}

#[derive(Clone, Debug, PartialEq)]
enum Phase<W> {
    /// Waiting for the router's answer; asking since `since`.
    Placing {
        since: Duration,
    },
    /// No worker yet; asking again at `at` (still within the placement wait from `since`).
    PlaceAgain {
        since: Duration,
        at: Duration,
    },
    /// Pausing before placing again.
    Paused {
        until: Duration,
    },
    /// Submitted to `worker`, waiting for its admission.
    Submitting {
        worker: W,
    },
    /// Admitted at `since`; its events flow.
    Running {
        worker: W,
        since: Duration,
    },
    Done,
}

#[derive(Debug)]
pub struct Lifecycle<W> {
    config: LifecycleConfig,
    /// The client's prompt length, for the usage it is told.
    prompt_tokens: u32,
    /// What the next attempt submits: the client's request, plus what earlier attempts delivered.
    current: GenerateRequest,
    phase: Phase<W>,
    avoid: Vec<W>,
    /// Ids of the tokens the current attempt delivered.
    delivered: Vec<u32>,
    /// Tokens delivered by earlier attempts.
    before: u32,
    /// Attempts so far minus one (every placement after a failure counts).
    attempt: u32,
    retries: u32,
    migrations: u32,
    /// The current attempt produced a token.
    first: bool,
    out: VecDeque<Output<W>>,
}

impl<W: Clone + PartialEq + fmt::Display> Lifecycle<W> {
    /// A validated request, arriving at `now`.
    pub fn new(request: GenerateRequest, config: LifecycleConfig, now: Duration) -> Self {
        let mut life = Self {
            config,
            prompt_tokens: request.prompt_tokens.len() as u32,
            current: request,
            phase: Phase::Done,
            avoid: Vec::new(),
            delivered: Vec::new(),
            before: 0,
            attempt: 0,
            retries: 0,
            migrations: 0,
            first: false,
            out: VecDeque::new(),
        };
        life.place(now);
        life
    }

    /// What the next (or current) attempt runs: the client's prompt and the tokens delivered so
    /// far, with fewer left to generate.
    pub fn request(&self) -> &GenerateRequest {
        &self.current
    }

    /// The attempt number (0 for the first placement).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn migrations(&self) -> u32 {
        self.migrations
    }

    /// Tokens the client received, over every attempt.
    pub fn delivered(&self) -> u32 {
        self.before + self.delivered.len() as u32
    }

    /// The worker the current attempt was submitted to, if it is there now.
    pub fn worker(&self) -> Option<&W> {
        match &self.phase {
            Phase::Submitting { worker } | Phase::Running { worker, .. } => Some(worker),
            _ => None,
        }
    }

    /// The worker whose events to wait for (admitted), with the attempt.
    pub fn running(&self) -> Option<(&W, u32)> {
        match &self.phase {
            Phase::Running { worker, .. } => Some((worker, self.attempt)),
            _ => None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<Output<W>> {
        self.out.pop_front()
    }

    /// When to call `handle_timeout`: while pausing, waiting to ask for a worker again, or
    /// (with a queue timeout) waiting in a worker's queue for the first token. While `running`
    /// names a worker, the pump waits for its events and this deadline at once.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.phase {
            Phase::Paused { until } => Some(until),
            Phase::PlaceAgain { at, .. } => Some(at),
            Phase::Running { since, .. } if !self.first => self.config.queue_timeout.map(|q| since + q),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        if let (Phase::Running { since, .. }, Some(wait)) = (&self.phase, self.config.queue_timeout)
            && !self.first
            && now >= *since + wait
        {
            let waited = now - *since;
            if let Some(worker) = self.worker().cloned() {
                self.out.push_back(Output::Cancel { worker, attempt: self.attempt });
            }
            self.end_attempt();
            return self.fail(Failure::Queued { waited });
        }
        match self.phase {
            Phase::Paused { until } if now >= until => self.place(now),
            Phase::PlaceAgain { since, at } if now >= at => {
                self.phase = Phase::Placing { since };
                self.out.push_back(Output::Place { avoid: self.avoid.clone() });
            }
            _ => {}
        }
    }

    /// The router's answer to `Place`: a worker, or none available.
    pub fn handle_placed(&mut self, now: Duration, worker: Option<W>) {
        let Phase::Placing { since } = self.phase else { return };
        match worker {
            Some(worker) => {
                self.first = false;
                self.out.push_back(Output::Submit { worker: worker.clone(), attempt: self.attempt });
                self.phase = Phase::Submitting { worker };
            }
            None if now.saturating_sub(since) + self.config.placement_retry <= self.config.placement_wait => {
                self.phase = Phase::PlaceAgain { since, at: now + self.config.placement_retry };
            }
            None => self
                .fail(Failure::Unavailable("No worker is available to serve this request; retry later.".to_string())),
        }
    }

    /// The worker's answer to `Submit`.
    pub fn handle_admission(&mut self, now: Duration, admission: Admission) {
        let Phase::Submitting { worker } = &self.phase else { return };
        match admission {
            Admission::Accepted => {
                self.out.push_back(Output::Admitted { attempt: self.attempt });
                self.phase = Phase::Running { worker: worker.clone(), since: now };
            }
            Admission::Unavailable(why) => self.attempt_ended(now, why, false),
            Admission::Overloaded { queued } => {
                self.end_attempt();
                self.fail(Failure::Overloaded { queued });
            }
            // The gateway checked the request against its own model, so a worker that refuses
            // it differs from that model (another vocabulary, a smaller pool): another worker may
            // take it. Only when none does is it the client's 400.
            Admission::Rejected(why) => self.attempt_ended(now, why, true),
        }
    }

    /// An event from `worker` for attempt `attempt`. Events of anything but the running attempt
    /// are stale: dropped, and their worker told to cancel. Returns whether it was current.
    pub fn handle_event(&mut self, now: Duration, worker: &W, attempt: u32, event: StreamEvent) -> bool {
        let current = matches!(&self.phase, Phase::Running { worker: w, .. } if w == worker) && attempt == self.attempt;
        if !current {
            self.out.push_back(Output::Note(Note::Stale));
            if !event.is_terminal() {
                self.out.push_back(Output::Cancel { worker: worker.clone(), attempt });
            }
            return false;
        }
        match event {
            StreamEvent::Delta { text, tokens, ids, logprobs } => {
                if !self.first {
                    self.first = true;
                    self.out.push_back(Output::FirstToken { attempt });
                }
                self.delivered.extend_from_slice(&ids);
                self.out.push_back(Output::Deliver(StreamEvent::Delta { text, tokens, ids, logprobs }));
            }
            StreamEvent::Scored { first, logprobs } => {
                // Delivered once: an attempt after this one does not score the prompt again.
                self.current.sampling.prompt_logprobs = None;
                self.out.push_back(Output::Deliver(StreamEvent::Scored { first, logprobs }));
            }
            StreamEvent::Finished { reason, usage } => {
                let usage = Usage {
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens: usage.completion_tokens + self.before,
                    // After a migration the attempt's prompt holds delivered tokens too.
                    cached_tokens: usage.cached_tokens.min(self.prompt_tokens),
                };
                self.out.push_back(Output::Deliver(StreamEvent::Finished { reason, usage }));
                self.end_attempt();
                self.finish();
            }
            StreamEvent::Failed(WorkerFailure::Invalid(why)) => {
                self.end_attempt();
                self.fail(Failure::Invalid(why));
            }
            StreamEvent::Failed(failure) => self.attempt_failed(now, failure.to_string()),
        }
        true
    }

    /// The current attempt's worker failed (a call failed, its node missed its lease, it
    /// crashed): retry or migrate. Ignored for any other worker.
    pub fn handle_worker_failed(&mut self, now: Duration, worker: &W, why: impl Into<String>) {
        if self.worker() == Some(worker) {
            self.attempt_failed(now, why.into());
        }
    }

    /// The client went away: the worker is told, and nothing more is delivered.
    pub fn handle_client_gone(&mut self, _now: Duration) {
        if self.is_done() {
            return;
        }
        if let Some(worker) = self.worker().cloned() {
            self.out.push_back(Output::Cancel { worker, attempt: self.attempt });
            self.end_attempt();
        }
        self.out.push_back(Output::Note(Note::ClientGone));
        self.finish();
    }

    fn place(&mut self, now: Duration) {
        self.phase = Phase::Placing { since: now };
        self.out.push_back(Output::Place { avoid: self.avoid.clone() });
    }

    fn end_attempt(&mut self) {
        self.out.push_back(Output::Ended { attempt: self.attempt });
    }

    fn fail(&mut self, failure: Failure) {
        self.out.push_back(Output::Fail(failure));
        self.finish();
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        self.out.push_back(Output::Done);
    }

    /// The current attempt failed with `why`: place again elsewhere, or give up.
    fn attempt_failed(&mut self, now: Duration, why: String) {
        self.attempt_ended(now, why, false)
    }

    /// The current attempt ended with `why` (`rejected`: its worker refused the request, which
    /// becomes the client's 400 once no retry is left): place again elsewhere, or give up.
    fn attempt_ended(&mut self, now: Duration, why: String, rejected: bool) {
        let Some(worker) = self.worker().cloned() else { return };
        self.out.push_back(Output::Cancel { worker: worker.clone(), attempt: self.attempt });
        self.end_attempt();
        if self.delivered() > 0 {
            // Mid-stream: continue on another worker from where the client is.
            if self.migrations >= self.config.migrations {
                let n = self.migrations;
                return self.fail(Failure::Unavailable(format!(
                    "The worker serving this request failed after {n} migrations: {why}"
                )));
            }
            self.migrations += 1;
            self.out.push_back(Output::Note(Note::Migration { why }));
            let ids = std::mem::take(&mut self.delivered);
            self.before += ids.len() as u32;
            self.current.sampling.max_tokens = self.current.sampling.max_tokens.saturating_sub(ids.len() as u32);
            // A constrained output goes on where it was in its grammar.
            if let Some(c) = &mut self.current.sampling.constraint {
                c.consumed.extend_from_slice(&ids);
            }
            self.current.prompt_tokens.extend(ids);
            if self.current.sampling.max_tokens == 0 {
                // Every token was delivered; only the end was lost.
                let usage =
                    Usage { prompt_tokens: self.prompt_tokens, completion_tokens: self.before, cached_tokens: 0 };
                self.out.push_back(Output::Deliver(StreamEvent::Finished { reason: FinishReason::Length, usage }));
                return self.finish();
            }
            self.avoid.push(worker);
            self.attempt += 1;
            self.phase = Phase::Paused { until: now + self.config.retry_pause };
        } else {
            self.out.push_back(Output::Note(Note::AttemptFailed { attempt: self.attempt, why: why.clone() }));
            if self.retries >= self.config.retries {
                return self.fail(if rejected {
                    Failure::Invalid(why)
                } else {
                    Failure::Unavailable(format!("The worker serving this request failed: {why}"))
                });
            }
            self.retries += 1;
            self.out.push_back(Output::Note(Note::Retry));
            self.avoid.push(worker);
            self.attempt += 1;
            // Give discovery a moment to drop a dead worker (or its restart to appear).
            self.phase = Phase::Paused { until: now + self.config.retry_pause * self.retries };
        }
    }
}

#[cfg(test)]
mod tests;
