//! CPU kernels for the forward pass: a threaded matrix product against row-major weights, RMSNorm,
//! RoPE (interleaved pairs as llama.cpp lays out GGUF weights, or halves as Hugging Face does),
//! SiLU and softmax. Plain loops written so LLVM vectorises them.

/// How many threads the matrix products use.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(16)
}

/// Dot product with four independent accumulators (vectorises well).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for i in 0..chunks {
        let (x, y) = (&a[i * 8..i * 8 + 8], &b[i * 8..i * 8 + 8]);
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        sum += a[i] * b[i];
    }
    sum
}

/// `out[t][o] = Σ_i x[t][i] · w[o][i]` (+ `bias[o]`) for `t` in `0..rows`: `x` is `rows × k`,
/// `w` is `n × k` row-major, `out` is `rows × n`. Output rows are split across threads, so every
/// weight row is read once per call whatever the number of input rows.
pub fn matmul(x: &[f32], rows: usize, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    assert_eq!(x.len(), rows * k, "matmul input");
    assert_eq!(w.len(), n * k, "matmul weight");
    assert_eq!(out.len(), rows * n, "matmul output");
    let threads = threads().min(n.div_ceil(64)).max(1);
    let per = n.div_ceil(threads);
    // Each thread computes a band of output columns into its own buffer; then they are scattered.
    let bands: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (lo, hi) = (t * per, ((t + 1) * per).min(n));
                s.spawn(move || {
                    let mut band = vec![0.0f32; rows * (hi - lo)];
                    for o in lo..hi {
                        let wr = &w[o * k..(o + 1) * k];
                        let b = bias.map_or(0.0, |b| b[o]);
                        for r in 0..rows {
                            band[r * (hi - lo) + (o - lo)] = dot(&x[r * k..(r + 1) * k], wr) + b;
                        }
                    }
                    band
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("matmul thread")).collect()
    });
    for (t, band) in bands.iter().enumerate() {
        let (lo, hi) = (t * per, ((t + 1) * per).min(n));
        let width = hi - lo;
        for r in 0..rows {
            out[r * n + lo..r * n + hi].copy_from_slice(&band[r * width..(r + 1) * width]);
        }
    }
}

/// `out = x / rms(x) · w`, one row of `w.len()` at a time.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// How a head's dimensions are paired for rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama.cpp's layout of GGUF Llama weights.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face's `rotate_half`.
    Halves,
}

/// Rotate one head vector in place for `pos`, using precomputed inverse frequencies.
pub fn rope(head: &mut [f32], pos: usize, inv_freq: &[f32], style: RopeStyle) {
    let half = inv_freq.len();
    for (i, &f) in inv_freq.iter().enumerate() {
        let (sin, cos) = (pos as f32 * f).sin_cos();
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Halves => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_the_naive_product() {
        let (rows, n, k) = (3, 130, 37);
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let mut out = vec![0.0; rows * n];
        matmul(&x, rows, &w, n, k, Some(&bias), &mut out);
        for r in 0..rows {
            for o in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum::<f32>() + bias[o];
                assert!((out[r * n + o] - want).abs() < 1e-4, "[{r}][{o}]");
            }
        }
    }

    #[test]
    fn rms_norm_and_softmax() {
        let mut out = [0.0; 4];
        rms_norm(&[1.0, -1.0, 1.0, -1.0], &[1.0, 2.0, 3.0, 4.0], 0.0, &mut out);
        assert_eq!(out, [1.0, -2.0, 3.0, -4.0]);
        let mut s = [1.0f32, 2.0, 3.0];
        softmax(&mut s);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6 && s[2] > s[1] && s[1] > s[0]);
    }

    #[test]
    fn rope_styles_rotate_the_same_pairs_differently_laid_out() {
        let inv = [1.0f32, 0.01];
        let mut a = [1.0, 0.0, 1.0, 0.0];
        rope(&mut a, 1, &inv, RopeStyle::Interleaved);
        // Halves layout of the same logical pairs: (x0, x2) and (x1, x3).
        let mut b = [1.0, 1.0, 0.0, 0.0];
        rope(&mut b, 1, &inv, RopeStyle::Halves);
        assert!((a[0] - b[0]).abs() < 1e-6 && (a[1] - b[2]).abs() < 1e-6);
        assert!((a[2] - b[1]).abs() < 1e-6 && (a[3] - b[3]).abs() < 1e-6);
        assert!((a[0] - 1f32.cos()).abs() < 1e-6 && (a[1] - 1f32.sin()).abs() < 1e-6);
        // Position 0 is the identity.
        let mut c = [0.3, -0.2, 0.5, 0.9];
        rope(&mut c, 0, &inv, RopeStyle::Interleaved);
        assert_eq!(c, [0.3, -0.2, 0.5, 0.9]);
    }
}
