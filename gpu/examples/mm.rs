use gpu::cpu::matrix::{Matrix, Precision};
use gpu::model::quant::GgmlType;
use std::time::Instant;
fn main() {
    let threads: usize = std::env::var("T").map(|v| v.parse().unwrap()).unwrap_or(1);
    gpu::cpu::threads::ComputePool::new(threads).unwrap().run(run);
}
fn run() {
    for &(rows, cols, dt) in
        &[(3072usize, 576usize, GgmlType::Q4_1), (49152, 576, GgmlType::Q8_0), (49152, 576, GgmlType::Q4_1)]
    {
        let per = if dt == GgmlType::Q4_1 { 20 } else { 34 };
        let bytes: Vec<u8> =
            (0..rows * cols / 32 * per).map(|i| (i * 7 % 251) as u8 & if i % per < 4 { 0x3f } else { 0xff }).collect();
        let m = Matrix::from_ggml(dt, &bytes, rows, cols, Precision::Fast).unwrap();
        for n in [1usize, 4, 16] {
            let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.1).sin()).collect();
            let mut out = vec![0.0; n * rows];
            let mut s = Vec::new();
            let iters = 2000 / n.max(1);
            m.matmul(&x, n, None, &mut out, &mut s);
            let t = Instant::now();
            for _ in 0..iters {
                m.matmul(&x, n, None, &mut out, &mut s);
            }
            let dt_s = t.elapsed().as_secs_f64() / iters as f64;
            let bytes_w = rows * cols / 32 * per;
            println!(
                "{rows}x{cols} {dt:?} n={n}: {:.1} us, {:.1} GB/s weights, {:.1} GMAC/s",
                dt_s * 1e6,
                bytes_w as f64 / dt_s / 1e9,
                (rows * cols * n) as f64 / dt_s / 1e9
            );
        }
    }
}
