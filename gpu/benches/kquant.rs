//! Matrix products of Q4_K, Q6_K and Q5_0 weights kept at their own width (4.75, 6.625 and 6
//! bits a weight) against the same weights requantized to Q8_0 (10 bits a weight with its scales
//! and offsets), the form they ran in before: at Llama 3.2 1B's shapes (2048 × 2048 attention, 8192 ×
//! 2048 MLP), for 1, 16 and 128 rows of activations, on the CPU backend's compute threads.
//!
//! As in a forward pass, each iteration runs through copies of the matrix (layers) that together
//! take at least 64 MiB in the kept form, more than the caches hold, so that weights come from
//! memory. Times are per product. Besides criterion's report, prints the median of alternating
//! runs of each pair and their ratio.
//!
//! `cargo bench -p gpu --bench kquant`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use gpu::cpu::Precision;
use gpu::cpu::matrix::Matrix;
use gpu::cpu::threads::{ComputePool, threads};
use gpu::model::quant::{GgmlType, quantize_q4_k, quantize_q5_0, quantize_q6_k};

const SHAPES: [(usize, usize); 2] = [(2048, 2048), (8192, 2048)];
const ROWS: [usize; 3] = [1, 16, 128];

/// Bytes of weights each iteration reads at least, in the kept form.
const RESIDENT: usize = 64 << 20;

/// Copies of the kept matrix of `dtype` and of its Q8_0 requantization, from the same random
/// weights.
fn layers(dtype: GgmlType, rows: usize, cols: usize) -> (Vec<Matrix>, Vec<Matrix>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let bytes = match dtype {
        GgmlType::Q4_K => quantize_q4_k(&values),
        GgmlType::Q5_0 => quantize_q5_0(&values),
        _ => quantize_q6_k(&values),
    };
    let kept = || Matrix::from_ggml(dtype, &bytes, rows, cols, Precision::Fast).expect("a quantized matrix");
    let copies = RESIDENT.div_ceil(kept().bytes());
    let old = kept().requantized_q8_0().expect("a Q8_0 form");
    let old = (0..copies).map(|_| old.requantized_q8_0().expect("a Q8_0 form")).collect();
    ((0..copies).map(|_| kept()).collect(), old)
}

/// `iters` passes of products of each of `ms` with `n` rows of `x`, inside the compute pool (as a
/// forward pass runs them), timed per product.
fn run(pool: &mut ComputePool, ms: &[Matrix], x: &[f32], n: usize, iters: u64) -> Duration {
    let mut out = vec![0.0; n * ms[0].rows];
    let mut scratch = Vec::new();
    pool.run(|| {
        let start = Instant::now();
        for _ in 0..iters {
            for m in ms {
                m.matmul(black_box(x), n, None, &mut out, &mut scratch);
            }
        }
        black_box(&out);
        start.elapsed() / ms.len() as u32
    })
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut pool = ComputePool::new(threads()).expect("compute threads");
    let mut summary = Vec::new();
    for dtype in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_0] {
        for (rows, cols) in SHAPES {
            let (kept, old) = layers(dtype, rows, cols);
            let bits = |m: &[Matrix]| m[0].bytes() as f64 * 8.0 / (rows * cols) as f64;
            for n in ROWS {
                let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.618).sin()).collect();
                let mut g = criterion.benchmark_group(format!("{dtype} {rows}x{cols} n={n}"));
                g.throughput(Throughput::Elements((rows * cols * n) as u64));
                g.bench_function(format!("kept ({:.3} bits)", bits(&kept)), |b| {
                    b.iter_custom(|iters| run(&mut pool, &kept, &x, n, iters))
                });
                g.bench_function(format!("q8_0 ({:.3} bits)", bits(&old)), |b| {
                    b.iter_custom(|iters| run(&mut pool, &old, &x, n, iters))
                });
                g.finish();
                // Alternating runs of about 50 ms each, for the medians and their ratio.
                let mut per_run = |m: &[Matrix]| {
                    let once = run(&mut pool, m, &x, n, 3).as_secs_f64() / 3.0;
                    ((0.05 / once) as u64).max(1)
                };
                let (ik, io) = (per_run(&kept), per_run(&old));
                let (mut tk, mut to) = (Vec::new(), Vec::new());
                for _ in 0..15 {
                    tk.push(run(&mut pool, &kept, &x, n, ik).as_secs_f64() / ik as f64);
                    to.push(run(&mut pool, &old, &x, n, io).as_secs_f64() / io as f64);
                }
                let median = |v: &mut Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                let (mk, mo) = (median(&mut tk), median(&mut to));
                summary.push(format!(
                    "{dtype} {rows}x{cols} n={n:<3}  kept {:>9.1} us ({:.3} bits)  q8_0 {:>9.1} us ({:.3} bits)  q8_0/kept {:.2}",
                    mk * 1e6,
                    bits(&kept),
                    mo * 1e6,
                    bits(&old),
                    mo / mk
                ));
            }
        }
    }
    criterion.final_summary();
    println!("\nMedians of 15 alternating runs on {} compute threads:", threads());
    for line in summary {
        println!("{line}");
    }
}
