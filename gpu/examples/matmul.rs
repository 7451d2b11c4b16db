//! Microbenchmark of the quantized matrix products at SmolLM2-135M's shapes, for 1, 4 and 16
//! activation rows, on the compute pool with `T` threads (default 1). Prints the median of 5 runs
//! of a few hundred products each.
//!
//! `cargo run --release -p gpu --example matmul` (`T=2` for two threads).

use std::time::Instant;

use gpu::cpu::matrix::{Matrix, Precision};
use gpu::cpu::threads::ComputePool;
use gpu::model::quant::GgmlType;

fn main() {
    let threads = std::env::var("T").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    ComputePool::new(threads).expect("threads").run(|| {
        println!("threads: {threads}");
        let shapes = [
            ("qkv", 960, 576, GgmlType::Q4_1),
            ("gate_up", 3072, 576, GgmlType::Q4_1),
            ("down", 576, 1536, GgmlType::Q4_1),
            ("lm_head", 49152, 576, GgmlType::Q8_0),
        ];
        for (name, rows, cols, dtype) in shapes {
            let per_block = if dtype == GgmlType::Q4_1 { 20 } else { 34 };
            // Arbitrary quants with small positive f16 scales (the first bytes of each block).
            let bytes: Vec<u8> =
                (0..rows * cols / 32 * per_block)
                    .map(|i| {
                        if i % per_block < 4 {
                            [0x00, 0x20, 0x00, 0xa0][i % per_block % 4]
                        } else {
                            (i * 7 % 251) as u8
                        }
                    })
                    .collect();
            let m = Matrix::from_ggml(dtype, &bytes, rows, cols, Precision::Fast).expect("quantized matrix");
            for n in [1usize, 4, 16] {
                let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.1).sin()).collect();
                let (mut out, mut scratch) = (vec![0.0; n * rows], Vec::new());
                let iters = (200_000_000 / (rows * cols * n)).max(3);
                let mut runs: Vec<f64> = (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        for _ in 0..iters {
                            m.matmul(&x, n, None, &mut out, &mut scratch);
                        }
                        t.elapsed().as_secs_f64() / iters as f64
                    })
                    .collect();
                runs.sort_by(f64::total_cmp);
                let s = runs[2];
                println!(
                    "{name:8} {rows:5}x{cols:4} {dtype:?} n={n:2}: {:8.1} us  {:6.1} GMAC/s",
                    s * 1e6,
                    (rows * cols * n) as f64 / s / 1e9
                );
            }
        }
    });
}
