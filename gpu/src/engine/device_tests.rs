//! Unit tests of prefills that copy their blocks straight into another engine's pool
//! (`DeviceSink`), between two engine threads with the test executor, whose stand-in KV checks at
//! every step that a sequence's blocks hold its own tokens.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use runtime::blocks::BlockHasher;
use runtime::ids::RequestId;
use runtime::request::{GenerateRequest, SamplingParams, StreamEvent};

use super::{Engine, EngineHandle, EngineLimits, Taken};
use crate::executor::{DeviceSink, TestExecutor, TestTokenizer};
use crate::tokenizer::Tokenizer;

const LIMITS: EngineLimits =
    EngineLimits { max_batch: 4, max_queue: 8, context_length: 256, block_size: 4, kv_blocks: 64, max_batch_tokens: 8 };

fn kv_engine() -> Engine {
    let exec = TestExecutor::new(Duration::ZERO, LIMITS.context_length).with_kv(LIMITS.kv_blocks, LIMITS.block_size);
    Engine::new(Box::new(exec), Arc::new(TestTokenizer::default()), LIMITS)
}

fn request(id: &str, prompt: &str) -> GenerateRequest {
    GenerateRequest {
        id: RequestId(id.into()),
        tag: None,
        trace: None,
        prompt_tokens: TestTokenizer::default().encode(prompt),
        sampling: SamplingParams { max_tokens: 6, temperature: 0.0, ..Default::default() },
    }
}

/// The request's text and how it ended, from an engine thread.
async fn served(handle: &EngineHandle, id: &str) -> (String, StreamEvent) {
    let mut text = String::new();
    for _ in 0..1000 {
        match handle.outputs().take(&RequestId(id.into())) {
            Taken::Events(events) => {
                for ev in events {
                    match ev {
                        StreamEvent::Delta { text: t, .. } => text.push_str(&t),
                        ev if ev.is_terminal() => return (text, ev),
                        _ => {}
                    }
                }
            }
            Taken::Pending(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            Taken::Unknown => panic!("{id} is unknown"),
        }
    }
    panic!("{id} did not finish");
}

#[tokio::test]
async fn prefilled_blocks_are_copied_into_the_other_pool_and_serve_its_request() {
    let prefill = EngineHandle::spawn(kv_engine(), "p", |_| {}).unwrap();
    let decode = EngineHandle::spawn(kv_engine(), "d", |_| {}).unwrap();
    let r = request("r", "The quick brown fox jumps over the lazy dog again");
    let bs = LIMITS.block_size;
    let usable = (r.prompt_tokens.len() - 1) / bs;
    let hashes = BlockHasher::new(bs).sequence_hashes(&r.prompt_tokens)[..usable].to_vec();
    let res = decode.reserve(hashes.clone()).await.unwrap();
    let sink = DeviceSink::new(decode.device_pool().unwrap().clone(), 0, res.fresh.clone());
    let progress = sink.progress();
    let mut chunks =
        prefill.prefill(RequestId("p".into()), r.prompt_tokens[..usable * bs].to_vec(), 0, Some(sink.clone()));
    let (mut blocks, mut last) = (0, false);
    while let Some(chunk) = chunks.recv().await {
        assert!(chunk.copied && chunk.data.is_empty(), "copied, not exported");
        assert_eq!(chunk.first, blocks, "in order");
        blocks += chunk.hashes.len();
        last = chunk.done;
    }
    assert!(last && blocks == usable, "{blocks} of {usable}");
    assert_eq!(*progress.borrow(), usable);
    sink.close();
    assert!(decode.commit(res, hashes).await);
    decode.submit(r.clone()).unwrap();
    let got = served(&decode, "r").await;
    // Computed alone, the same request gives the same text (and the decode engine's stand-in KV
    // would have failed the step had a block been misplaced).
    let alone = EngineHandle::spawn(kv_engine(), "a", |_| {}).unwrap();
    alone.submit(r).unwrap();
    let StreamEvent::Finished { reason, mut usage } = got.1 else { panic!("{got:?}") };
    assert_eq!(usage.cached_tokens as usize, usable * bs, "the copied blocks count as cached");
    usage.cached_tokens = 0;
    assert_eq!((got.0, StreamEvent::Finished { reason, usage }), served(&alone, "r").await);
}

#[tokio::test]
async fn a_closed_sink_stops_the_prefill() {
    let prefill = EngineHandle::spawn(kv_engine(), "p", |_| {}).unwrap();
    let decode = EngineHandle::spawn(kv_engine(), "d", |_| {}).unwrap();
    let tokens = TestTokenizer::default().encode(&"a long prompt of many blocks ".repeat(4));
    let whole = tokens.len() / LIMITS.block_size * LIMITS.block_size;
    let blocks: Vec<u64> = (0..whole / LIMITS.block_size).map(|i| 1000 + i as u64).collect();
    let res = decode.reserve(blocks).await.unwrap();
    let sink = DeviceSink::new(decode.device_pool().unwrap().clone(), 0, res.fresh.clone());
    // Closed before the first copy: the decode worker gave up.
    sink.close();
    let mut chunks = prefill.prefill(RequestId("p".into()), tokens[..whole].to_vec(), 0, Some(sink.clone()));
    let mut seen = HashMap::new();
    while let Some(c) = chunks.recv().await {
        seen.insert(c.first, c);
    }
    assert!(seen.is_empty(), "no chunk is reported once the sink is closed: {seen:?}");
    assert_eq!(*sink.progress().borrow(), 0);
    decode.abort(res);
}
