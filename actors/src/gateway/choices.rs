//! OpenAI responses of one or more choices (`n`): whole, with every choice collected at once and
//! the usage counting the prompt once, or streamed, with the choices' chunks merged as they come,
//! each with its `index`, and the end (`[DONE]`, the usage chunk) once every choice finished.

use std::collections::VecDeque;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use runtime::request::{FinishReason, StreamEvent, Usage};
use serde_json::Value;

use super::driver::Update;
use super::error::ApiError;
use super::http::{self, EventRx, SsePump, Timing};
use super::openai::logprobs::Writer;
use super::openai::{ChoiceOut, Endpoint, ResponseMeta};
use super::reasoning::Splitter;
use super::tools::reply::{self, Reading, Stream as ToolStream};

/// One choice on its way: the events it had before its stream started, the rest, its timings,
/// its log-probability writer when the request asked for them, and the prompt text it echoes
/// (completions' `echo`; scored with the log probabilities when they were asked for).
pub struct Choice {
    pub first: Vec<StreamEvent>,
    pub rx: EventRx,
    pub timing: Timing,
    pub logprobs: Option<Writer>,
    pub echo: Option<String>,
    /// How the output is read for tool calls, when the request has tools.
    pub tools: Option<Reading>,
    /// A chat answer's reasoning is split off: Some(whether the prompt opened the block).
    pub reasoning: Option<bool>,
}

impl Choice {
    /// The one choice of a request whose first event came.
    pub fn single(first: StreamEvent, rx: EventRx, timing: Timing) -> Self {
        Self { first: vec![first], rx, timing, logprobs: None, echo: None, tools: None, reasoning: None }
    }
}

/// Wait for one choice's end: its text, finish reason and log probabilities, and its usage.
pub async fn collect(mut c: Choice) -> Result<(ChoiceOut, Usage), ApiError> {
    let mut text = c.echo.take().unwrap_or_default();
    let mut early = std::mem::take(&mut c.first).into_iter();
    loop {
        let item = match early.next() {
            Some(ev) => Update::Event(ev),
            None => match c.rx.recv().await {
                Some(item) => item,
                None => break,
            },
        };
        match item {
            Update::Admitted => {}
            Update::Event(ev) => {
                c.timing.saw(&ev);
                match ev {
                    StreamEvent::Delta { text: t, logprobs, .. } => {
                        text.push_str(&t);
                        if let Some(w) = &mut c.logprobs {
                            w.keep(logprobs);
                        }
                    }
                    StreamEvent::Scored { first, logprobs } => {
                        if let Some(w) = &mut c.logprobs {
                            w.keep_prompt(first, logprobs);
                        }
                    }
                    StreamEvent::Finished { reason, usage } => {
                        let logprobs = c.logprobs.as_mut().map(Writer::whole);
                        let (reasoning, text) = match c.reasoning {
                            Some(inside) => super::reasoning::split(&text, inside),
                            None => (None, text),
                        };
                        let (text, tool_calls) = match &c.tools {
                            Some(reading) => {
                                let parsed = reading.read(&text);
                                (parsed.content.unwrap_or_default(), parsed.calls)
                            }
                            None => (text, Vec::new()),
                        };
                        return Ok((ChoiceOut { text, reason, logprobs, tool_calls, reasoning }, usage));
                    }
                    StreamEvent::Failed(f) => return Err(ApiError::unavailable(f.to_string())),
                }
            }
            Update::Error(e) => return Err(e),
        }
    }
    Err(ApiError::unavailable("The request ended without a result."))
}

/// The usage of several choices of one prompt: the prompt once (cached as far as every choice
/// found it cached), every completion.
fn add(total: &mut Usage, one: Usage) {
    total.cached_tokens =
        if total.prompt_tokens == 0 { one.cached_tokens } else { total.cached_tokens.min(one.cached_tokens) };
    total.prompt_tokens = one.prompt_tokens;
    total.completion_tokens += one.completion_tokens;
}

/// The whole response once every choice finished (the first failure answers instead).
pub async fn whole(meta: ResponseMeta, choices: Vec<Choice>) -> Response {
    let done = futures_util::future::join_all(choices.into_iter().map(collect)).await;
    let mut outs = Vec::with_capacity(done.len());
    let mut usage = Usage::default();
    for d in done {
        match d {
            Ok((out, u)) => {
                add(&mut usage, u);
                outs.push(out);
            }
            Err(e) => return e.into_response(),
        }
    }
    axum::Json(meta.full(&outs, usage)).into_response()
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// A choice's side of the stream.
struct Side {
    timing: Timing,
    logprobs: Option<Writer>,
    /// The prompt text still to echo: with the prompt's log probabilities when they come.
    echo: Option<String>,
    /// The output so far, read for tool calls, when the request has tools.
    tools: Option<ToolStream>,
    /// A chat answer's reasoning, split off as it comes.
    reasoning: Option<Splitter>,
    finished: bool,
}

struct SseState {
    meta: ResponseMeta,
    include_usage: bool,
    sides: Vec<Side>,
    usage: Usage,
    /// Every choice's updates, tagged with its index; `None` when its channel closed.
    merged: BoxStream<'static, (usize, Option<Update>)>,
    queue: VecDeque<Event>,
    done: bool,
}

impl SsePump for SseState {
    type Input = (usize, Option<Update>);

    fn ready(&mut self) -> Option<Event> {
        self.queue.pop_front()
    }

    fn done(&self) -> bool {
        self.done
    }

    fn next(&mut self) -> impl std::future::Future<Output = Option<Self::Input>> + Send {
        self.merged.next()
    }

    fn push(&mut self, (index, item): Self::Input) {
        if self.done {
            return;
        }
        match item {
            Some(Update::Admitted) => {}
            Some(Update::Event(ev)) => {
                let side = &mut self.sides[index];
                side.timing.saw(&ev);
                match ev {
                    StreamEvent::Delta { text, logprobs, .. } => {
                        let lp = side.logprobs.as_mut().map(|w| w.chunk(&logprobs));
                        let text = match &mut side.reasoning {
                            Some(r) => {
                                let (thought, said) = r.push(&text);
                                self.reasoning_delta(index, &thought);
                                said
                            }
                            None => text,
                        };
                        self.content_delta(index, &text, lp);
                    }
                    StreamEvent::Scored { first, logprobs } => {
                        let text = side.echo.take().unwrap_or_default();
                        let lp = side.logprobs.as_mut().map(|w| w.prompt_chunk(first, &logprobs));
                        let chunk = self.meta.chunk(index, Some(&text), None, self.include_usage, lp);
                        self.queue.push_back(data(&chunk));
                    }
                    StreamEvent::Finished { reason, usage } => self.finish(index, reason, usage),
                    StreamEvent::Failed(f) => self.fail(ApiError::unavailable(f.to_string())),
                }
            }
            Some(Update::Error(e)) => self.fail(e),
            None if !self.sides[index].finished => {
                self.fail(ApiError::unavailable("The request ended without a result."))
            }
            None => {}
        }
    }

    fn fail(&mut self, e: ApiError) {
        self.queue.push_back(data(&e.body()));
        self.done = true;
    }
}

impl SseState {
    fn reasoning_delta(&mut self, index: usize, thought: &str) {
        if !thought.is_empty() {
            let delta = serde_json::json!({ "reasoning_content": thought });
            self.queue.push_back(data(&self.meta.delta_chunk(index, delta, None, self.include_usage)));
        }
    }

    /// Content of choice `index`: with tools, it goes out up to where a call may start.
    fn content_delta(&mut self, index: usize, text: &str, logprobs: Option<Value>) {
        let text = reply::pass(&mut self.sides[index].tools, text.to_string());
        if let Some(text) = text.filter(|t| !t.is_empty() || logprobs.is_some()) {
            let chunk = self.meta.chunk(index, Some(&text), None, self.include_usage, logprobs);
            self.queue.push_back(data(&chunk));
        }
    }

    fn finish(&mut self, index: usize, reason: FinishReason, usage: Usage) {
        self.sides[index].finished = true;
        add(&mut self.usage, usage);
        if let Some(mut r) = self.sides[index].reasoning.take() {
            let (thought, said) = r.finish();
            self.reasoning_delta(index, &thought);
            self.content_delta(index, &said, None);
        }
        let (rest, calls) = reply::finish(&mut self.sides[index].tools);
        if let Some(rest) = rest {
            self.queue.push_back(data(&self.meta.chunk(index, Some(&rest), None, self.include_usage, None)));
        }
        if calls.is_empty() {
            self.queue.push_back(data(&self.meta.chunk(index, None, Some(reason), self.include_usage, None)));
        } else {
            for chunk in self.meta.tool_call_chunks(index, &calls, self.include_usage) {
                self.queue.push_back(data(&chunk));
            }
            let end = self.meta.delta_chunk(index, serde_json::json!({}), Some("tool_calls"), self.include_usage);
            self.queue.push_back(data(&end));
        }
        if self.sides.iter().all(|s| s.finished) {
            if self.include_usage {
                self.queue.push_back(data(&self.meta.usage_chunk(self.usage)));
            }
            self.queue.push_back(Event::default().data("[DONE]"));
            self.done = true;
        }
    }
}

/// The streamed response of every choice.
pub fn sse(
    meta: ResponseMeta,
    include_usage: bool,
    choices: Vec<Choice>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut firsts = Vec::new();
    let mut sides = Vec::new();
    let mut streams = Vec::new();
    for (index, c) in choices.into_iter().enumerate() {
        firsts.push(c.first);
        let tools = c.tools.map(ToolStream::new);
        let reasoning = c.reasoning.map(Splitter::new);
        sides.push(Side { timing: c.timing, logprobs: c.logprobs, echo: c.echo, tools, reasoning, finished: false });
        let updates = stream::unfold(c.rx, |mut rx| async move { rx.recv().await.map(|u| (Some(u), rx)) });
        streams.push(updates.chain(stream::once(async { None })).map(move |u| (index, u)).boxed());
    }
    let merged = stream::select_all(streams).boxed();
    let mut state =
        SseState { meta, include_usage, sides, usage: Usage::default(), merged, queue: VecDeque::new(), done: false };
    for (index, first) in firsts.into_iter().enumerate() {
        if state.meta.endpoint == Endpoint::Chat {
            let opener = data(&state.meta.chunk(index, None, None, include_usage, None));
            state.queue.push_back(opener);
        }
        // An echo without log probabilities leads the choice; with them, it waits for them.
        if state.sides[index].logprobs.is_none()
            && let Some(text) = state.sides[index].echo.take()
        {
            let chunk = state.meta.chunk(index, Some(&text), None, include_usage, None);
            state.queue.push_back(data(&chunk));
        }
        for ev in first {
            state.push((index, Some(Update::Event(ev))));
        }
    }
    http::sse(state)
}
