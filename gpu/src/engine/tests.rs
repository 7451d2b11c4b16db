//! Unit tests of `engine`.
use std::time::Duration;

use runtime::request::{SamplingParams, Usage};

use super::*;
use crate::executor::{TEST_PANIC_MARKER, TestExecutor, TestTokenizer};

fn engine(max_batch: usize) -> Engine {
    engine_with_delay(max_batch, Duration::ZERO)
}

fn engine_with_delay(max_batch: usize, step: Duration) -> Engine {
    let limits = EngineLimits {
        max_batch,
        max_queue: 16,
        context_length: 64,
        block_size: 4,
        kv_blocks: 256,
        max_batch_tokens: 512,
    };
    engine_with(limits, step)
}

fn engine_with(limits: EngineLimits, step: Duration) -> Engine {
    Engine::new(Box::new(TestExecutor::new(step, limits.context_length)), Arc::new(TestTokenizer::default()), limits)
}

fn req(id: &str, prompt: &str, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        id: RequestId(id.into()),
        tag: None,
        trace: None,
        prompt_tokens: TestTokenizer::default().encode(prompt),
        sampling,
    }
}

/// Run to completion; returns per-request (text, finish event).
fn drain(e: &mut Engine) -> HashMap<String, (String, StreamEvent)> {
    let mut text: HashMap<String, String> = HashMap::new();
    let mut done = HashMap::new();
    for _ in 0..1000 {
        if !e.has_work() {
            break;
        }
        for (id, ev) in e.step().unwrap() {
            match ev {
                StreamEvent::Delta { text: t, .. } => text.entry(id.0).or_default().push_str(&t),
                StreamEvent::Scored { .. } => {}
                other => {
                    done.insert(id.0.clone(), (text.remove(&id.0).unwrap_or_default(), other));
                }
            }
        }
    }
    done
}

use std::collections::HashMap;

/// The event with its usage's cached tokens taken out, and those tokens: outputs compare equal
/// whatever the pool held, and what the cache gave is checked on its own.
fn split_cached(ev: &StreamEvent) -> (StreamEvent, u32) {
    match ev.clone() {
        StreamEvent::Finished { reason, mut usage } => {
            let cached = std::mem::take(&mut usage.cached_tokens);
            (StreamEvent::Finished { reason, usage }, cached)
        }
        other => (other, 0),
    }
}

/// `drain`'s results without their cached tokens (`split_cached`).
fn uncached(done: HashMap<String, (String, StreamEvent)>) -> HashMap<String, (String, StreamEvent)> {
    done.into_iter().map(|(id, (text, ev))| (id, (text, split_cached(&ev).0))).collect()
}

#[test]
fn greedy_is_deterministic_and_batch_independent() {
    let greedy = SamplingParams { max_tokens: 20, ..Default::default() };
    let mut alone = engine(1);
    alone.submit(req("a", "hello there", greedy.clone()));
    let alone = drain(&mut alone);
    let mut batched = engine(4);
    batched.submit(req("a", "hello there", greedy.clone()));
    batched.submit(req("b", "something else entirely", greedy.clone()));
    let batched = drain(&mut batched);
    assert_eq!(alone["a"], batched["a"]);
    assert!(!alone["a"].0.is_empty());
    assert_ne!(batched["a"].0, batched["b"].0);
}

#[test]
fn max_tokens_gives_length_and_usage() {
    let mut e = engine(2);
    e.submit(req("a", "count", SamplingParams { max_tokens: 3, ..Default::default() }));
    let out = drain(&mut e);
    assert_eq!(
        out["a"].1,
        StreamEvent::Finished {
            reason: FinishReason::Length,
            usage: Usage { prompt_tokens: 5, completion_tokens: 3, cached_tokens: 0 }
        }
    );
}

#[test]
fn seeded_sampling_repeats_and_seeds_differ() {
    let run = |seed| {
        let mut e = engine(1);
        e.submit(req("a", "hi", SamplingParams { temperature: 1.0, seed, max_tokens: 30, ..Default::default() }));
        drain(&mut e)["a"].0.clone()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn stop_string_cuts_output() {
    let greedy = SamplingParams { max_tokens: 40, ..Default::default() };
    let mut e = engine(1);
    e.submit(req("a", "hi", greedy.clone()));
    let full = drain(&mut e)["a"].0.clone();
    // Stop at the second word of the full greedy text.
    let word = full.split(' ').nth(1).unwrap().to_string();
    assert!(!word.is_empty(), "{full}");
    let mut e = engine(1);
    e.submit(req("a", "hi", SamplingParams { stop: vec![word.clone()], ..greedy }));
    let (text, fin) = drain(&mut e).remove("a").unwrap();
    assert_eq!(text, full[..full.find(&word).unwrap()]);
    assert!(matches!(fin, StreamEvent::Finished { reason: FinishReason::StopSequence(0), .. }), "{fin:?}");
}

#[test]
fn batch_is_capped_and_queue_is_fifo() {
    let mut e = engine(2);
    for id in ["a", "b", "c"] {
        e.submit(req(id, "x", SamplingParams { max_tokens: 2, ..Default::default() }));
    }
    e.step().unwrap();
    assert_eq!((e.running(), e.waiting()), (2, 1));
    assert!(e.cancel(&RequestId("c".into())));
    assert!(!e.cancel(&RequestId("c".into())));
    let out = drain(&mut e);
    assert_eq!(out.len(), 2);
}

#[test]
fn log_probabilities_come_with_their_tokens() {
    let mut e = engine(1);
    e.submit(req("a", "hello", SamplingParams { max_tokens: 6, logprobs: Some(3), ..Default::default() }));
    let mut ids = Vec::new();
    let mut entries = Vec::new();
    for _ in 0..50 {
        if !e.has_work() {
            break;
        }
        for (_, ev) in e.step().unwrap() {
            if let StreamEvent::Delta { ids: i, logprobs, .. } = ev {
                assert_eq!(i.len(), logprobs.len(), "one entry per token");
                ids.extend(i);
                entries.extend(logprobs);
            }
        }
    }
    assert!(!ids.is_empty());
    for (id, lp) in ids.iter().zip(&entries) {
        assert_eq!(lp.id, *id);
        assert_eq!(lp.top.len(), 3);
        // Greedy: the chosen token is the most likely one, with the same value.
        assert_eq!(lp.top[0], (*id, lp.logprob));
        assert!(lp.logprob <= 0.0 && lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
    // Without asking, none travel.
    let mut e = engine(1);
    e.submit(req("b", "hello", SamplingParams { max_tokens: 3, ..Default::default() }));
    for (_, ev) in e.step().unwrap() {
        if let StreamEvent::Delta { logprobs, .. } = ev {
            assert!(logprobs.is_empty());
        }
    }
}

/// Every event of a request, in order, run to completion.
fn events(e: &mut Engine) -> Vec<StreamEvent> {
    let mut all = Vec::new();
    while e.has_work() {
        all.extend(e.step().unwrap().into_iter().map(|(_, ev)| ev));
    }
    all
}

#[test]
fn a_scored_prompt_reports_each_token_given_those_before_it_whatever_the_chunking_and_cache() {
    let prompt = "a prompt long enough to fill several blocks";
    let tokens = TestTokenizer::default().encode(prompt);
    // The reference: the executor's logits after each prefix, on their own.
    let mut exec = TestExecutor::new(Duration::ZERO, 256);
    let expected: Vec<runtime::request::TokenLogprob> = (1..tokens.len())
        .map(|p| {
            let view = SequenceView {
                tokens: &tokens[..p],
                start: 0,
                prompt_len: tokens.len(),
                blocks: &[],
                wants_logits: true,
                all_logits: false,
            };
            let logits = exec.forward(&[view]).unwrap().remove(0).unwrap();
            crate::sampling::logprobs(&logits, tokens[p], 2)
        })
        .collect();
    let scored = SamplingParams { max_tokens: 6, prompt_logprobs: Some(2), ..Default::default() };
    let plain = |e: &mut Engine| {
        e.submit(req("plain", prompt, greedy(6)));
        events(e)
    };
    let reference = plain(&mut engine_with(limits(256, 4, 512), Duration::ZERO));
    // In one step, in chunks of five tokens, and with the prompt's blocks already cached.
    for (budget, warm) in [(512, false), (5, false), (512, true)] {
        let mut e = engine_with(limits(256, 4, budget), Duration::ZERO);
        if warm {
            assert_eq!(plain(&mut e), reference);
        }
        let cached = e.stats().cached_tokens;
        e.submit(req("scored", prompt, scored.clone()));
        let out = events(&mut e);
        assert_eq!(e.stats().cached_tokens, cached, "a scored prompt is computed whole");
        let StreamEvent::Scored { first, logprobs } = &out[0] else { panic!("scores come first: {out:?}") };
        assert_eq!(*first, tokens[0]);
        assert_eq!(logprobs, &expected, "budget {budget}, warm {warm}");
        assert_eq!(out.iter().filter(|ev| matches!(ev, StreamEvent::Scored { .. })).count(), 1);
        // What it generates is what it would have without scoring.
        assert_eq!(out[1..], reference[..], "budget {budget}, warm {warm}");
        assert_no_leak(&e);
    }
    // Nothing to generate: the scores, and the end.
    let mut e = engine_with(limits(256, 4, 512), Duration::ZERO);
    e.submit(req("score-only", prompt, SamplingParams { max_tokens: 0, ..scored.clone() }));
    let out = events(&mut e);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(&out[0], StreamEvent::Scored { logprobs, .. } if logprobs == &expected));
    let usage = Usage { prompt_tokens: tokens.len() as u32, completion_tokens: 0, cached_tokens: 0 };
    assert_eq!(out[1], StreamEvent::Finished { reason: FinishReason::Length, usage });
    // A one-token prompt has nothing to score but its first token.
    e.submit(req("one", "a", SamplingParams { max_tokens: 0, ..scored }));
    let out = events(&mut e);
    assert!(matches!(&out[0], StreamEvent::Scored { logprobs, .. } if logprobs.is_empty()), "{out:?}");
}

/// Every event of each request, run to completion.
fn events_by_id(e: &mut Engine) -> HashMap<String, Vec<StreamEvent>> {
    let mut all: HashMap<String, Vec<StreamEvent>> = HashMap::new();
    while e.has_work() {
        for (id, ev) in e.step().unwrap() {
            all.entry(id.0).or_default().push(ev);
        }
    }
    all
}

fn text_and_ids(events: &[StreamEvent]) -> (String, Vec<u32>) {
    let (mut text, mut all) = (String::new(), Vec::new());
    for ev in events {
        if let StreamEvent::Delta { text: t, ids, .. } = ev {
            text.push_str(t);
            all.extend(ids);
        }
    }
    (text, all)
}

fn constrained(grammar: runtime::request::Grammar, temperature: f32, seed: u64) -> SamplingParams {
    let constraint = Some(Box::new(runtime::request::Constraint::new(grammar)));
    SamplingParams { max_tokens: 60, temperature, seed, constraint, ..Default::default() }
}

const SCHEMA: &str = r#"{"type": "object", "properties": {"n": {"type": "integer"}, "word": {"enum": ["sea", "sky"]}},
    "required": ["n", "word"], "additionalProperties": false}"#;

fn matches_schema(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|v| v["n"].is_i64() && ["sea", "sky"].contains(&v["word"].as_str().unwrap_or("")))
}

#[test]
fn constrained_and_free_sequences_share_a_batch_and_each_gets_its_own() {
    use runtime::request::Grammar;
    let free = alone(12);
    let mut e = engine_with(limits(256, 8, 512), Duration::ZERO);
    for (i, p) in PROMPTS.iter().enumerate().take(3) {
        e.submit(req(&format!("free{i}"), p, greedy(12)));
    }
    e.submit(req("json", "hello", constrained(Grammar::JsonSchema(SCHEMA.into()), 0.0, 1)));
    e.submit(req("json-sampled", "hello", constrained(Grammar::JsonSchema(SCHEMA.into()), 1.0, 7)));
    e.submit(req("regex", "hello", constrained(Grammar::Regex("[a-c]{4}!".into()), 1.0, 3)));
    e.submit(req("choice", "hello", constrained(Grammar::Choice(vec!["north".into(), "south".into()]), 0.8, 5)));
    let out = events_by_id(&mut e);
    for i in 0..3 {
        let evs = &out[&format!("free{i}")];
        let text = text_and_ids(evs).0;
        assert_eq!((text, evs.last().unwrap().clone()), free[i], "a free sequence is as it is alone");
    }
    for id in ["json", "json-sampled"] {
        let text = text_and_ids(&out[id]).0;
        assert!(matches_schema(&text), "{id}: {text:?}");
    }
    let regex = text_and_ids(&out["regex"]).0;
    assert!(
        regex.len() == 5 && regex[..4].bytes().all(|b| (b'a'..=b'c').contains(&b)) && regex.ends_with('!'),
        "{regex:?}"
    );
    assert!(["north", "south"].contains(&text_and_ids(&out["choice"]).0.as_str()));
    // A grammar that completes stops its sequence.
    for id in ["json", "json-sampled", "regex", "choice"] {
        assert!(matches!(out[id].last(), Some(StreamEvent::Finished { reason: FinishReason::Stop, .. })), "{id}");
    }
    let stats = e.stats();
    assert!(stats.masks > 10, "{stats:?}");
    assert_no_leak(&e);
    // A constraint that does not compile is refused at submission.
    let bad = constrained(Grammar::Regex("(".into()), 0.0, 1);
    assert!(matches!(e.submit(req("bad", "x", bad)), Some(StreamEvent::Failed(WorkerFailure::Invalid(_)))));
}

#[test]
fn a_constrained_request_resumed_after_its_fifth_token_still_matches() {
    use runtime::request::{Constraint, Grammar};
    let prompt = TestTokenizer::default().encode("hello");
    for seed in 0..4 {
        let sampling = constrained(Grammar::JsonSchema(SCHEMA.into()), 1.0, seed);
        let mut e = engine(2);
        e.submit(GenerateRequest {
            id: RequestId("a".into()),
            tag: None,
            trace: None,
            prompt_tokens: prompt.clone(),
            sampling: sampling.clone(),
        });
        let (whole, ids) = text_and_ids(&events_by_id(&mut e)["a"]);
        assert!(matches_schema(&whole) && ids.len() > 5, "{whole:?}");
        // What a migration sends the next worker: the first five tokens are now prompt, and
        // the constraint has consumed them.
        let mut rest = sampling.clone();
        rest.max_tokens -= 5;
        rest.constraint =
            Some(Box::new(Constraint { grammar: Grammar::JsonSchema(SCHEMA.into()), consumed: ids[..5].to_vec() }));
        let mut e = engine(2);
        let resumed = [prompt.clone(), ids[..5].to_vec()].concat();
        e.submit(GenerateRequest {
            id: RequestId("b".into()),
            tag: None,
            trace: None,
            prompt_tokens: resumed,
            sampling: rest,
        });
        let (tail, _) = text_and_ids(&events_by_id(&mut e)["b"]);
        let text = TestTokenizer::default().decode(&ids[..5]) + &tail;
        assert!(matches_schema(&text), "seed {seed}: {text:?}");
    }
}

#[test]
fn higher_priority_is_admitted_first_then_arrival_order() {
    // One sequence at a time: the order they finish in is the order they were admitted in.
    let mut e = engine(1);
    let with = |priority| SamplingParams { max_tokens: 1, priority, ..Default::default() };
    for (id, p) in [("low-1", 0), ("low-2", 0), ("high", 5), ("mid", 1), ("high-2", 5)] {
        e.submit(req(id, "x", with(p)));
    }
    let mut order = Vec::new();
    for _ in 0..50 {
        if !e.has_work() {
            break;
        }
        for (id, ev) in e.step().unwrap() {
            if matches!(ev, StreamEvent::Finished { .. }) {
                order.push(id.0);
            }
        }
    }
    assert_eq!(order, ["high", "high-2", "mid", "low-1", "low-2"]);
}

#[test]
fn prompt_too_long_is_refused() {
    let mut e = engine(1);
    let long = "x".repeat(100);
    match e.submit(req("a", &long, SamplingParams::default())) {
        Some(StreamEvent::Failed(runtime::request::WorkerFailure::Invalid(m))) => {
            assert!(m.contains("context length is 64"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn thread_fails_open_requests_when_the_engine_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle =
        EngineHandle::spawn(engine_with_delay(2, Duration::from_millis(5)), "t", move |why| tx.send(why).unwrap())
            .unwrap();
    handle.submit(req("ok", "fine", SamplingParams { max_tokens: 1000, ..Default::default() })).unwrap();
    handle.submit(req("boom", TEST_PANIC_MARKER, SamplingParams::default())).unwrap();
    let why = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert!(why.contains("asked for a panic"), "{why}");
    let mut last = None;
    for _ in 0..100 {
        match handle.outputs().take(&RequestId("ok".into())) {
            Taken::Events(ev) => last = ev.last().cloned(),
            Taken::Pending(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Taken::Unknown => break,
        }
    }
    assert!(matches!(last, Some(StreamEvent::Failed(runtime::request::WorkerFailure::Crashed(_)))), "{last:?}");
    assert!(handle.submit(req("late", "x", SamplingParams::default())).is_err());
}

#[tokio::test]
async fn the_thread_compiles_constraints_aside_and_drops_one_cancelled_meanwhile() {
    use runtime::request::Grammar;
    let handle = EngineHandle::spawn(engine(2), "c", |_| {}).unwrap();
    let text = |events: &[StreamEvent]| text_and_ids(events).0;
    handle.submit(req("json", "hello", constrained(Grammar::JsonSchema(SCHEMA.into()), 1.0, 3))).unwrap();
    handle.submit(req("free", "hello", greedy(4))).unwrap();
    handle.submit(req("gone", "hello", constrained(Grammar::Regex("[a-z]{40}".into()), 1.0, 1))).unwrap();
    assert!(handle.cancel(&RequestId("gone".into())));
    handle.submit(req("bad", "hello", constrained(Grammar::Regex("(".into()), 1.0, 1))).unwrap();
    let mut got: HashMap<&str, Vec<StreamEvent>> = HashMap::new();
    for _ in 0..400 {
        for id in ["json", "free", "bad"] {
            if let Taken::Events(ev) = handle.outputs().take(&RequestId(id.into())) {
                got.entry(id).or_default().extend(ev);
            }
        }
        if ["json", "free", "bad"]
            .iter()
            .all(|id| got.get(id).is_some_and(|e| e.last().is_some_and(StreamEvent::is_terminal)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches_schema(&text(&got["json"])), "{:?}", got["json"]);
    assert!(matches!(got["free"].last(), Some(StreamEvent::Finished { .. })));
    assert!(matches!(got["bad"].last(), Some(StreamEvent::Failed(WorkerFailure::Invalid(_)))), "{:?}", got["bad"]);
    assert!(matches!(handle.outputs().take(&RequestId("gone".into())), Taken::Unknown));
}

fn limits(kv_blocks: usize, max_batch: usize, max_batch_tokens: usize) -> EngineLimits {
    EngineLimits { max_batch, max_queue: 64, context_length: 256, block_size: 4, kv_blocks, max_batch_tokens }
}

fn assert_no_leak(e: &Engine) {
    let p = e.stats().pool;
    assert_eq!(p.active, 0, "{p:?}");
    assert_eq!(p.free + p.inactive, p.total, "{p:?}");
}

const PROMPTS: [&str; 8] = [
    "a",
    "hello there",
    "the quick brown fox",
    "<|im_start|>user\nHi<|im_end|>\n",
    "0123456789abcdefghij",
    "some much longer prompt that spans many blocks of four tokens",
    "x y z",
    "é日本語",
];

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { max_tokens, ..Default::default() }
}

/// Each prompt run alone on a roomy engine: the reference outputs.
fn alone(max_tokens: u32) -> Vec<(String, StreamEvent)> {
    PROMPTS
        .iter()
        .map(|p| {
            let mut e = engine_with(limits(256, 1, 512), Duration::ZERO);
            e.submit(req("r", p, greedy(max_tokens)));
            drain(&mut e).remove("r").unwrap()
        })
        .collect()
}

fn together(e: &mut Engine, max_tokens: u32) -> Vec<(String, StreamEvent)> {
    for (i, p) in PROMPTS.iter().enumerate() {
        e.submit(req(&i.to_string(), p, greedy(max_tokens)));
    }
    let mut out = drain(e);
    (0..PROMPTS.len()).map(|i| out.remove(&i.to_string()).unwrap()).collect()
}

#[test]
fn eight_concurrent_sequences_match_each_run_alone() {
    let reference = alone(24);
    let mut e = engine_with(limits(256, 8, 512), Duration::ZERO);
    assert_eq!(together(&mut e, 24), reference);
    assert_eq!(e.stats().preemptions, 0);
    assert_no_leak(&e);
}

#[test]
fn chunked_prefill_gives_the_same_tokens() {
    let reference = alone(16);
    // Five tokens a step: long prompts take several steps of prefill, shared with decodes.
    let mut e = engine_with(limits(256, 8, 5), Duration::ZERO);
    assert_eq!(together(&mut e, 16), reference);
    assert_no_leak(&e);
}

#[test]
fn tiny_pool_preempts_and_still_completes_every_sequence() {
    let reference = alone(24);
    // 24 blocks of 4 tokens: not enough for eight sequences of up to ~90 tokens at once.
    let mut e = engine_with(limits(24, 8, 512), Duration::ZERO);
    assert_eq!(together(&mut e, 24), reference);
    assert!(e.stats().preemptions > 0, "{:?}", e.stats());
    assert_no_leak(&e);
}

#[test]
fn repeated_prompt_hits_the_prefix_cache() {
    let prompt = "a prompt long enough to fill several blocks";
    let mut e = engine_with(limits(256, 4, 512), Duration::ZERO);
    e.submit(req("first", prompt, greedy(8)));
    let first = drain(&mut e).remove("first").unwrap();
    let cold = e.stats();
    assert_eq!(cold.cached_tokens, 0);
    e.submit(req("second", prompt, greedy(8)));
    let second = drain(&mut e).remove("second").unwrap();
    let warm = e.stats();
    assert_eq!((&first.0, split_cached(&first.1).0), (&second.0, split_cached(&second.1).0));
    // All full blocks but the one holding the last prompt token come from the cache.
    let prompt_len = TestTokenizer::default().encode(prompt).len();
    assert_eq!(split_cached(&first.1).1, 0);
    assert_eq!(split_cached(&second.1).1 as usize, (prompt_len - 1) / 4 * 4, "the usage says so too");
    let reusable = ((prompt_len - 1) / 4 * 4) as u64;
    assert_eq!(warm.cached_tokens, reusable);
    assert_eq!(warm.computed_tokens - cold.computed_tokens, cold.computed_tokens - reusable);
    assert_eq!(warm.pool.prefix_hits, reusable / 4);
    assert_no_leak(&e);
}

#[test]
fn a_prompt_already_in_the_pool_is_admitted_before_prompts_still_to_compute() {
    // Eight tokens a step. "cached" runs once, so its prompt's blocks stay in the pool; then a
    // long prompt arrives, and "cached" again after it.
    let cached = "a prompt long enough to fill several blocks";
    let long = "some much longer prompt that spans many blocks of four tokens, and then some more";
    let mut e = engine_with(limits(256, 8, 8), Duration::ZERO);
    e.submit(req("warm", cached, greedy(4)));
    let warm = drain(&mut e).remove("warm").unwrap();
    e.submit(req("long", long, greedy(4)));
    e.submit(req("cached", cached, greedy(4)));
    // One token computes what the pool lacks of "cached": it goes first and has its first token
    // after one step, while the long prompt takes the rest of the budget in chunks (arrival order
    // would have kept "cached" waiting until the long prompt was done, about ten steps).
    let events = e.step().unwrap();
    let ids: Vec<&str> = events.iter().map(|(id, _)| id.0.as_str()).collect();
    assert_eq!(ids, ["cached"]);
    let StreamEvent::Delta { text: first_text, .. } = &events[0].1 else { panic!("{events:?}") };
    assert_eq!(e.running(), 2);
    let prompt_len = TestTokenizer::default().encode(cached).len();
    assert_eq!(e.stats().cached_tokens, ((prompt_len - 1) / 4 * 4) as u64, "all of it but the last token");
    let mut rest = drain(&mut e);
    // The order changes no output.
    let mut alone = engine_with(limits(256, 1, 512), Duration::ZERO);
    alone.submit(req("long", long, greedy(4)));
    assert_eq!(rest.remove("long").unwrap(), drain(&mut alone).remove("long").unwrap());
    let (text, finished) = rest.remove("cached").unwrap();
    assert_eq!(split_cached(&finished).1 as usize, (prompt_len - 1) / 4 * 4);
    assert_eq!((format!("{first_text}{text}"), split_cached(&finished).0), warm);
    assert_no_leak(&e);
}

#[test]
fn kv_events_describe_the_registered_blocks() {
    let mut e = engine_with(limits(8, 1, 512), Duration::ZERO);
    e.submit(req("a", "0123456789abcdef", greedy(4)));
    drain(&mut e);
    let events = e.take_kv_events();
    let stored: Vec<u64> = events
        .iter()
        .flat_map(|r| match &r.event {
            runtime::kv::KvEvent::Stored { hashes, .. } => hashes.clone(),
            _ => Vec::new(),
        })
        .collect();
    // 16 prompt + 4 generated tokens: the 5 full blocks (the last one holds generated tokens).
    let tokens: Vec<u32> = TestTokenizer::default().encode("0123456789abcdef");
    let hasher = runtime::blocks::BlockHasher::new(4);
    assert_eq!(stored[..4], hasher.sequence_hashes(&tokens)[..]);
    assert!(stored.len() == 4 || stored.len() == 5, "{stored:?}");
    assert_eq!(events.iter().map(|r| r.id).collect::<Vec<_>>(), (1..=events.len() as u64).collect::<Vec<_>>());
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let mut e = engine(1);
    let bad = GenerateRequest {
        id: RequestId("bad".into()),
        tag: None,
        trace: None,
        prompt_tokens: vec![5, 100_000],
        sampling: greedy(2),
    };
    match e.submit(bad) {
        Some(StreamEvent::Failed(runtime::request::WorkerFailure::Invalid(m))) => assert!(m.contains("100000"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn request_larger_than_the_pool_is_refused() {
    let mut e = engine_with(limits(4, 1, 512), Duration::ZERO);
    match e.submit(req("big", "0123456789", greedy(20))) {
        Some(StreamEvent::Failed(runtime::request::WorkerFailure::Invalid(m))) => {
            assert!(m.contains("4 blocks"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cancel_frees_blocks() {
    let mut e = engine_with(limits(64, 2, 512), Duration::ZERO);
    e.submit(req("a", "some prompt here", greedy(50)));
    e.step().unwrap();
    assert!(e.stats().pool.active > 0);
    assert!(e.cancel(&RequestId("a".into())));
    assert_no_leak(&e);
}

fn kv_engine(limits: EngineLimits) -> Engine {
    let exec = TestExecutor::new(Duration::ZERO, limits.context_length).with_kv(limits.kv_blocks, limits.block_size);
    Engine::new(Box::new(exec), Arc::new(TestTokenizer::default()), limits)
}

/// Run a prefill for another worker to the end, collecting its chunks (exported and released).
fn prefill_chunks(e: &mut Engine, id: &str, tokens: Vec<u32>, skip: usize) -> Vec<(Prefilled, Vec<u8>)> {
    e.submit_prefill(RequestId(id.into()), tokens, skip).unwrap();
    let n = e.block_layout().unwrap().block_bytes();
    let mut out = Vec::new();
    while e.has_work() {
        assert!(e.step().unwrap().is_empty(), "a prefill emits no stream events");
        for p in e.take_prefilled() {
            let mut data = vec![0u8; p.blocks.len() * n];
            e.export_blocks(&p.blocks, &mut data).unwrap();
            e.release_prefilled(&p);
            out.push((p, data));
        }
    }
    out
}

#[test]
fn prefilled_blocks_move_to_another_engine_and_serve_its_request() {
    // Chunks of 8 tokens per step: blocks of 4 complete two at a time.
    let limits = EngineLimits { max_batch_tokens: 8, context_length: 256, ..engine(1).limits() };
    let (mut prefill, mut decode, mut alone) = (kv_engine(limits), kv_engine(limits), kv_engine(limits));
    let greedy = SamplingParams { max_tokens: 6, temperature: 0.0, ..Default::default() };
    let r = req("r", "The quick brown fox jumps over it", greedy.clone());
    let bs = limits.block_size;
    // The decode side can reuse all but the block holding the last token.
    let usable = (r.prompt_tokens.len() - 1) / bs;
    let hashes = BlockHasher::new(bs).sequence_hashes(&r.prompt_tokens)[..usable].to_vec();
    let tokens = r.prompt_tokens[..usable * bs].to_vec();
    let chunks = prefill_chunks(&mut prefill, "p", tokens.clone(), 0);
    assert!(chunks.len() >= 3, "blocks stream out as they complete: {}", chunks.len());
    assert!(chunks.last().unwrap().0.done && chunks.iter().rev().skip(1).all(|c| !c.0.done));
    let got: Vec<u64> = chunks.iter().flat_map(|c| c.0.hashes.clone()).collect();
    assert_eq!(got, hashes, "every usable block, in order, under the prompt's hashes");
    // The decode engine reserves, imports, commits, then serves the request from its cache.
    let res = decode.reserve(&hashes).unwrap();
    assert_eq!((res.cached.len(), res.fresh.len()), (0, usable));
    let n = decode.block_layout().unwrap().block_bytes();
    for (p, data) in &chunks {
        for (i, block) in data.chunks_exact(n).enumerate() {
            decode.import_block(res.fresh[p.first + i], block).unwrap();
        }
    }
    decode.commit(res, &hashes);
    decode.submit(r.clone());
    let served = drain(&mut decode);
    assert_eq!(decode.stats().cached_tokens, (usable * bs) as u64);
    assert_eq!(decode.stats().computed_tokens as usize, r.prompt_tokens.len() - usable * bs + 5);
    alone.submit(r.clone());
    assert_eq!(split_cached(&served["r"].1).1 as usize, usable * bs, "the imported blocks count as cached");
    assert_eq!(uncached(served), drain(&mut alone), "the same output as computing it all locally");

    // A longer prompt sharing the prefix: the decode engine already holds `usable` blocks, so the
    // prefill skips them and only the new ones travel.
    let longer = req("l", "The quick brown fox jumps over it and runs far away", greedy);
    let usable2 = (longer.prompt_tokens.len() - 1) / bs;
    let hashes2 = BlockHasher::new(bs).sequence_hashes(&longer.prompt_tokens)[..usable2].to_vec();
    let res = decode.reserve(&hashes2).unwrap();
    assert_eq!(res.cached.len(), usable);
    let chunks = prefill_chunks(&mut prefill, "p2", longer.prompt_tokens[..usable2 * bs].to_vec(), res.cached.len());
    let sent: usize = chunks.iter().map(|c| c.0.blocks.len()).sum();
    assert_eq!(sent, usable2 - usable);
    assert_eq!(chunks[0].0.first, usable);
    for (p, data) in &chunks {
        for (i, block) in data.chunks_exact(n).enumerate() {
            decode.import_block(res.fresh[p.first - usable + i], block).unwrap();
        }
    }
    decode.commit(res, &hashes2);
    decode.submit(longer.clone());
    let served = drain(&mut decode);
    assert_eq!(split_cached(&served["l"].1).1 as usize, usable2 * bs);
    alone.submit(longer);
    assert_eq!(uncached(served), uncached(drain(&mut alone)));
}

#[test]
fn a_misplaced_block_is_caught_and_an_aborted_reservation_frees_everything() {
    let limits = EngineLimits { context_length: 256, ..engine(1).limits() };
    let (mut prefill, mut decode) = (kv_engine(limits), kv_engine(limits));
    let r = req("r", "abcdefghijklmnopq", SamplingParams { max_tokens: 2, ..Default::default() });
    let bs = limits.block_size;
    let usable = (r.prompt_tokens.len() - 1) / bs;
    let hashes = BlockHasher::new(bs).sequence_hashes(&r.prompt_tokens)[..usable].to_vec();
    let chunks = prefill_chunks(&mut prefill, "p", r.prompt_tokens[..usable * bs].to_vec(), 0);
    let data: Vec<u8> = chunks.iter().flat_map(|c| c.1.clone()).collect();
    let n = decode.block_layout().unwrap().block_bytes();
    let free = decode.stats().pool.free;
    let res = decode.reserve(&hashes).unwrap();
    // Blocks 0 and 1 swapped: the executor notices the KV does not hold the prompt's tokens.
    let mut order: Vec<usize> = (0..usable).collect();
    order.swap(0, 1);
    for (i, &src) in order.iter().enumerate() {
        decode.import_block(res.fresh[i], &data[src * n..(src + 1) * n]).unwrap();
    }
    assert!(decode.import_block(res.fresh[0], &data[..n - 1]).is_err(), "wrong length");
    decode.commit(res, &hashes);
    decode.submit(r.clone());
    let err = decode.step().unwrap_err().to_string();
    assert!(err.contains("KV at position 0"), "{err}");
    // An aborted reservation gives every block back.
    let mut fresh = kv_engine(limits);
    let res = fresh.reserve(&hashes).unwrap();
    assert_eq!(fresh.stats().pool.free, free - usable);
    fresh.abort(res);
    assert_eq!(fresh.stats().pool.free, free);
    // A prefill asked for with tokens outside the vocabulary is refused, not run.
    let outside = vec![u32::MAX; limits.block_size];
    assert!(
        prefill.submit_prefill(RequestId("bad".into()), outside, 0).unwrap_err().to_string().contains("vocabulary")
    );
    // A pool too small for the reservation says so and keeps nothing.
    let mut tiny = kv_engine(EngineLimits { kv_blocks: 2, ..limits });
    assert!(tiny.reserve(&hashes).is_none());
    assert_eq!(tiny.stats().pool.free, 2);
}

/// Write-back: blocks leave the pool as it evicts them, with the KV they held; onboarded into a
/// fresh engine they serve the prompt as computing it would. Write-through: every block as it is
/// registered. Off: nothing.
#[test]
fn offloaded_blocks_carry_their_kv_and_serve_the_prompt_elsewhere() {
    use runtime::config::OffloadMode;
    let bs = 4;
    // Room for one prompt at a time: the second evicts the first.
    let limits = EngineLimits { kv_blocks: 8, context_length: 256, ..engine(1).limits() };
    let greedy = SamplingParams { max_tokens: 2, temperature: 0.0, ..Default::default() };
    let a = req("a", "abcdefghijklmnopqrstuv", greedy.clone());
    let b = req("b", "ABCDEFGHIJKLMNOPQRSTUV", greedy.clone());
    let hashes_a = BlockHasher::new(bs).sequence_hashes(&a.prompt_tokens);

    let mut e = kv_engine(limits);
    e.set_offload(OffloadMode::WriteBack);
    e.submit(a.clone());
    drain(&mut e);
    assert!(e.take_offloaded().is_empty(), "nothing evicted yet");
    e.submit(b.clone());
    drain(&mut e);
    let out = e.take_offloaded();
    assert!(out.len() >= 3, "b evicted a's blocks: {}", out.len());
    let n = e.block_layout().unwrap().block_bytes();
    assert!(out.iter().all(|o| o.data.len() == n && hashes_a.contains(&o.hash)));
    // Least recently used first: a's tail first (its head was released last), each block with its
    // parent.
    let k = out.len();
    let head = hashes_a.len() - k;
    let evicted: Vec<u64> = out.iter().map(|o| o.hash).collect();
    assert_eq!(evicted, hashes_a[head..].iter().rev().copied().collect::<Vec<_>>());
    assert!(out.iter().all(|o| o.parent == Some(hashes_a[hashes_a.iter().position(|h| *h == o.hash).unwrap() - 1])));

    // A fresh engine gets a's head from e's pool and its tail as offloaded: the same output as
    // computing a there.
    let kept = e.reserve(&hashes_a[..head]).unwrap();
    assert_eq!(kept.cached.len(), head, "the head stayed in the pool");
    let mut data = vec![0u8; head * n];
    e.export_blocks(&kept.cached, &mut data).unwrap();
    e.abort(kept);
    let mut other = kv_engine(limits);
    let lead = &hashes_a[..];
    let res = other.reserve(lead).unwrap();
    for i in 0..lead.len() {
        let block = match i.checked_sub(head) {
            None => &data[i * n..(i + 1) * n],
            Some(t) => &out[k - 1 - t].data[..],
        };
        other.import_block(res.fresh[i], block).unwrap();
    }
    other.commit(res, lead);
    other.submit(a.clone());
    let served = drain(&mut other);
    assert_eq!(other.stats().cached_tokens, (lead.len() * bs) as u64);
    let mut alone = kv_engine(limits);
    alone.submit(a.clone());
    assert_eq!(uncached(served), drain(&mut alone));

    // Write-through copies each block as it is registered; off copies nothing.
    let mut wt = kv_engine(limits);
    wt.set_offload(OffloadMode::WriteThrough);
    wt.submit(a.clone());
    drain(&mut wt);
    let got: Vec<u64> = wt.take_offloaded().iter().map(|o| o.hash).collect();
    // The prompt's five full blocks (with the first generated token, 23 tokens were computed).
    assert_eq!(got, hashes_a);
    let mut off = kv_engine(limits);
    off.set_offload(OffloadMode::Off);
    off.submit(a);
    drain(&mut off);
    off.submit(b);
    drain(&mut off);
    assert!(off.take_offloaded().is_empty());
}

/// The test executor, picking tokens itself as a device would: greedy by argmax, a nucleus draw
/// recorded (and answered greedily); it counts how often each path ran.
struct PickingExecutor {
    inner: TestExecutor,
    picked_steps: Arc<std::sync::atomic::AtomicUsize>,
    logits_steps: Arc<std::sync::atomic::AtomicUsize>,
    uniforms: Arc<std::sync::Mutex<Vec<f32>>>,
}

impl Executor for PickingExecutor {
    fn info(&self) -> crate::executor::ModelInfo {
        self.inner.info()
    }

    fn forward(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<Option<Vec<f32>>>, ExecutorError> {
        self.logits_steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.forward(batch)
    }

    fn picks_tokens(&self) -> bool {
        true
    }

    fn forward_picked(
        &mut self,
        batch: &[SequenceView<'_>],
        picks: &[Option<Pick>],
    ) -> Option<Result<Vec<Option<u32>>, ExecutorError>> {
        self.picked_steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(picks.len(), batch.len());
        let logits = match self.inner.forward(batch) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let mut out = Vec::new();
        for ((l, p), v) in logits.into_iter().zip(picks).zip(batch) {
            assert_eq!(l.is_some(), v.wants_logits);
            assert_eq!(p.is_some(), v.wants_logits, "a pick exactly for each sequence that wants a token");
            if let Some(Pick::Nucleus { uniform, .. }) = p {
                self.uniforms.lock().unwrap().push(*uniform);
            }
            out.push(l.map(|l| crate::sampling::argmax(&l)));
        }
        Some(Ok(out))
    }
}

#[test]
fn an_executor_that_picks_tokens_gets_picks_and_gives_the_same_greedy_text() {
    let limits = limits(256, 4, 512);
    let counters = || Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (picked, logits, uniforms) = (counters(), counters(), Arc::new(std::sync::Mutex::new(Vec::new())));
    let exec = PickingExecutor {
        inner: TestExecutor::new(Duration::ZERO, limits.context_length),
        picked_steps: picked.clone(),
        logits_steps: logits.clone(),
        uniforms: uniforms.clone(),
    };
    let mut e = Engine::new(Box::new(exec), Arc::new(TestTokenizer::default()), limits);
    e.submit(req("a", PROMPTS[0], greedy(12)));
    e.submit(req("b", PROMPTS[1], greedy(12)));
    let got = drain(&mut e);
    let reference = alone(12);
    assert_eq!(got["a"], reference[0]);
    assert_eq!(got["b"], reference[1]);
    let ordering = std::sync::atomic::Ordering::Relaxed;
    assert!(picked.load(ordering) > 0);
    assert_eq!(logits.load(ordering), 0, "greedy never needs logits on the host");
    // Top-k is sampled here, so that step falls back to logits.
    let sampled = SamplingParams { temperature: 0.8, top_k: 5, max_tokens: 3, ..Default::default() };
    e.submit(req("k", PROMPTS[2], sampled));
    drain(&mut e);
    assert!(logits.load(ordering) > 0);
    // Nucleus sampling is picked on the device with a uniform from the sequence's seeded draw.
    let nucleus = SamplingParams { temperature: 0.8, top_p: 0.9, seed: 11, max_tokens: 4, ..Default::default() };
    for _ in 0..2 {
        e.submit(req("n", PROMPTS[2], nucleus.clone()));
        drain(&mut e);
    }
    let u = uniforms.lock().unwrap().clone();
    assert_eq!(u.len(), 8);
    assert!(u.iter().all(|u| (0.0..1.0).contains(u)));
    assert_eq!(u[..4], u[4..], "the same seed draws the same uniforms");
    // A constrained sequence is masked and sampled on the host (the CUDA backend's seam): its
    // steps take logits, and its output matches.
    let before = (picked.load(ordering), logits.load(ordering));
    e.submit(req("json", PROMPTS[0], constrained(runtime::request::Grammar::JsonSchema(SCHEMA.into()), 0.0, 1)));
    let out = drain(&mut e);
    assert!(matches_schema(&out["json"].0), "{:?}", out["json"]);
    assert_eq!(picked.load(ordering), before.0, "no step of it was picked on the device");
    assert!(logits.load(ordering) > before.1);
}

#[test]
fn preempted_constrained_sequences_keep_their_place_in_the_grammar() {
    use runtime::request::Grammar;
    // 40 blocks of 4 tokens for six sequences of up to 120: preemption and recomputation.
    let mut e = engine_with(limits(40, 6, 512), Duration::ZERO);
    for (i, p) in PROMPTS.iter().enumerate().take(6) {
        e.submit(req(&i.to_string(), p, constrained(Grammar::JsonSchema(SCHEMA.into()), 1.0, i as u64)));
    }
    let out = drain(&mut e);
    assert!(e.stats().preemptions > 0, "{:?}", e.stats());
    for i in 0..6 {
        let (text, end) = &out[&i.to_string()];
        assert!(matches_schema(text), "{i}: {text:?} {end:?}");
    }
    assert_no_leak(&e);
    // A cancelled constrained sequence frees its blocks (and its matcher with it).
    e.submit(req("c", "hello", constrained(Grammar::Regex("[a-z]{30}".into()), 1.0, 1)));
    e.step().unwrap();
    assert!(e.cancel(&RequestId("c".into())));
    assert!(!e.has_work());
    assert_no_leak(&e);
}
