//! Microbenchmarks of the router's `KvIndex` on one core: applying KV events, and matching a
//! 128-block prompt over 1,000 workers. Besides criterion's report, prints the p50/p99 of single
//! `find_matches` calls (criterion reports means and medians of batches, not tail latency).
//!
//! `cargo bench -p actors --bench router_index`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use policy::router::index::{KvIndex, Tier};
use vocab::kv::{KvEvent, KvEventRecord};

const WORKERS: usize = 1000;
const PROMPT: usize = 128;

/// Stored events: `events` single-block events spread over 100 workers, each worker's ids in order.
fn stored_events(events: usize) -> Vec<(usize, KvEventRecord)> {
    let mut next_id = vec![0u64; 100];
    (0..events)
        .map(|i| {
            let w = i % 100;
            next_id[w] += 1;
            let hash = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (w, KvEventRecord { id: next_id[w], event: KvEvent::Stored { parent: None, hashes: vec![hash] } })
        })
        .collect()
}

/// 1,000 workers: worker k holds the prompt's first `k % 129` blocks, plus 200 blocks of its own.
fn populated() -> (KvIndex<usize>, Vec<u64>) {
    let prompt: Vec<u64> = (0..PROMPT as u64).map(|i| 1_000_000 + i).collect();
    let mut ix = KvIndex::new();
    for w in 0..WORKERS {
        let mut hashes: Vec<u64> = prompt[..w % (PROMPT + 1)].to_vec();
        hashes.extend((0..200).map(|j| (w * 1000 + j) as u64 + 10_000_000));
        ix.apply(
            &w,
            Tier::Device,
            &KvEventRecord { id: 1, event: KvEvent::Stored { parent: None, hashes } },
            Duration::ZERO,
        );
    }
    (ix, prompt)
}

fn benches(c: &mut Criterion) {
    let events = stored_events(100_000);
    let mut g = c.benchmark_group("kv_index");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("apply 100k stored events", |b| {
        b.iter_batched(
            KvIndex::<usize>::new,
            |mut ix| {
                for (w, e) in &events {
                    ix.apply(w, Tier::Device, e, Duration::ZERO);
                }
                ix
            },
            BatchSize::LargeInput,
        )
    });
    let (ix, prompt) = populated();
    g.throughput(Throughput::Elements(1));
    g.bench_function("find_matches 128 blocks x 1000 workers", |b| b.iter(|| black_box(ix.find_matches(&prompt))));
    g.finish();
}

criterion_group!(index, benches);

fn main() {
    index();
    Criterion::default().configure_from_args().final_summary();
    // Tail latency of single calls.
    let (ix, prompt) = populated();
    let mut times: Vec<Duration> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            black_box(ix.find_matches(black_box(&prompt)));
            t.elapsed()
        })
        .collect();
    times.sort();
    let at = |p: f64| times[((p * times.len() as f64) as usize).min(times.len() - 1)];
    println!("find_matches, 128 blocks over {WORKERS} workers, single calls: p50 {:?}, p99 {:?}", at(0.5), at(0.99));
    let events = stored_events(1_000_000);
    let mut ix = KvIndex::new();
    let t = Instant::now();
    for (w, e) in &events {
        ix.apply(w, Tier::Device, e, Duration::ZERO);
    }
    let secs = t.elapsed().as_secs_f64();
    println!("apply: {:.2} M events/s (1M single-block stored events over 100 workers)", 1.0 / secs);
}
