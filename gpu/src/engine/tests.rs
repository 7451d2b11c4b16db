use std::time::Duration;

use runtime::request::SamplingParams;

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
    };
    Engine::new(
        Box::new(TestExecutor::new(step, 64)),
        Arc::new(TestTokenizer::default()),
        limits,
    )
}

fn req(id: &str, prompt: &str, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        id: RequestId(id.into()),
        tag: None,
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
                other => {
                    done.insert(
                        id.0.clone(),
                        (text.remove(&id.0).unwrap_or_default(), other),
                    );
                }
            }
        }
    }
    done
}

use std::collections::HashMap;

#[test]
fn greedy_is_deterministic_and_batch_independent() {
    let greedy = SamplingParams {
        max_tokens: 20,
        ..Default::default()
    };
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
    e.submit(req(
        "a",
        "count",
        SamplingParams {
            max_tokens: 3,
            ..Default::default()
        },
    ));
    let out = drain(&mut e);
    assert_eq!(
        out["a"].1,
        StreamEvent::Finished {
            reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 5,
                completion_tokens: 3
            }
        }
    );
}

#[test]
fn seeded_sampling_repeats_and_seeds_differ() {
    let run = |seed| {
        let mut e = engine(1);
        e.submit(req(
            "a",
            "hi",
            SamplingParams {
                temperature: 1.0,
                seed,
                max_tokens: 30,
                ..Default::default()
            },
        ));
        drain(&mut e)["a"].0.clone()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn stop_string_cuts_output() {
    let greedy = SamplingParams {
        max_tokens: 40,
        ..Default::default()
    };
    let mut e = engine(1);
    e.submit(req("a", "hi", greedy.clone()));
    let full = drain(&mut e)["a"].0.clone();
    // Stop at the second word of the full greedy text.
    let word = full.split(' ').nth(1).unwrap().to_string();
    assert!(!word.is_empty(), "{full}");
    let mut e = engine(1);
    e.submit(req(
        "a",
        "hi",
        SamplingParams {
            stop: vec![word.clone()],
            ..greedy
        },
    ));
    let (text, fin) = drain(&mut e).remove("a").unwrap();
    assert_eq!(text, full[..full.find(&word).unwrap()]);
    assert!(matches!(
        fin,
        StreamEvent::Finished {
            reason: FinishReason::Stop,
            ..
        }
    ));
}

#[test]
fn batch_is_capped_and_queue_is_fifo() {
    let mut e = engine(2);
    for id in ["a", "b", "c"] {
        e.submit(req(
            id,
            "x",
            SamplingParams {
                max_tokens: 2,
                ..Default::default()
            },
        ));
    }
    e.step().unwrap();
    assert_eq!((e.running(), e.waiting()), (2, 1));
    assert!(e.cancel(&RequestId("c".into())));
    assert!(!e.cancel(&RequestId("c".into())));
    let out = drain(&mut e);
    assert_eq!(out.len(), 2);
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
    let handle = EngineHandle::spawn(
        engine_with_delay(2, Duration::from_millis(5)),
        "t",
        move |why| tx.send(why).unwrap(),
    )
    .unwrap();
    handle
        .submit(req(
            "ok",
            "fine",
            SamplingParams {
                max_tokens: 1000,
                ..Default::default()
            },
        ))
        .unwrap();
    handle
        .submit(req("boom", TEST_PANIC_MARKER, SamplingParams::default()))
        .unwrap();
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
    assert!(
        matches!(
            last,
            Some(StreamEvent::Failed(
                runtime::request::WorkerFailure::Crashed(_)
            ))
        ),
        "{last:?}"
    );
    assert!(
        handle
            .submit(req("late", "x", SamplingParams::default()))
            .is_err()
    );
}
