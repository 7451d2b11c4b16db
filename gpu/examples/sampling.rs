//! Microbenchmark of one token's draw from real logits: `Sampler::sample` (top-k by selection,
//! min-p by a filter, the nucleus over a prefix sorted on demand) against the full sort of the
//! vocabulary it replaced (`sample_by_full_sort`), on SmolLM2-135M's logits for a few chat
//! prompts (49,152 tokens a row), at the embedded defaults (T 0.6, top-p 0.9), at T 1 with the
//! whole vocabulary, and with top-k 40. Prints the median microseconds a draw of 5 runs.
//!
//! `cargo run --release -p gpu --example sampling [MODEL.gguf]` (default: the default model,
//! fetched on first use).

use std::time::Instant;

use gpu::executor::{Executor, SequenceView};
use gpu::pool::BlockId;
use gpu::sampling::{Sampler, sample_by_full_sort};
use rand::SeedableRng;
use rand::rngs::StdRng;
use runtime::config::{ModelSection, ModelSource};
use runtime::request::SamplingParams;

const PROMPTS: [&str; 3] = [
    "<|im_start|>user\nTell me a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\nWaves",
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let source = match std::env::args().nth(1) {
        Some(path) => ModelSource::Path(path.into()),
        None => ModelSource::Default,
    };
    let section = ModelSection { source, ..Default::default() };
    let g = gpu::model::open_source(&section).expect("the model opens");
    let tokenizer = gpu::model::tokenizer_from_gguf(&g).expect("its tokenizer loads");
    let mut exec = gpu::cpu::ModelExecutor::from_gguf(&g, "m", 64, 16).expect("the model loads");
    let table: Vec<BlockId> = (0..64).map(BlockId).collect();
    let rows: Vec<Vec<f32>> = PROMPTS
        .iter()
        .map(|p| {
            let tokens = tokenizer.encode(p);
            let view = SequenceView::whole_prompt(&tokens, &table);
            exec.forward(&[view]).expect("forward").remove(0).expect("logits")
        })
        .collect();
    println!("vocabulary {} tokens, {} rows", rows[0].len(), rows.len());
    let cases = [
        ("T 0.6, top-p 0.9 (the embedded defaults)", 0.6, 0.9, 0),
        ("T 1.0, whole vocabulary", 1.0, 1.0, 0),
        ("T 0.8, top-k 40, top-p 0.95", 0.8, 0.95, 40),
    ];
    for (name, temperature, top_p, top_k) in cases {
        let params = SamplingParams { temperature, top_p, top_k, seed: 1, ..Default::default() };
        let draws = 200;
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let mut rng = StdRng::seed_from_u64(1);
            let start = Instant::now();
            for i in 0..draws {
                std::hint::black_box(sample_by_full_sort(&params, &mut rng, &rows[i % rows.len()]));
            }
            old.push(start.elapsed().as_secs_f64() * 1e6 / draws as f64);
            let mut sampler = Sampler::new(&params, &[]);
            let start = Instant::now();
            for i in 0..draws {
                std::hint::black_box(sampler.sample(&rows[i % rows.len()]));
            }
            new.push(start.elapsed().as_secs_f64() * 1e6 / draws as f64);
        }
        let (old, new) = (median(old), median(new));
        println!("{name}: full sort {old:.0} us, partial {new:.0} us a draw ({:.1}x)", old / new);
    }
}
