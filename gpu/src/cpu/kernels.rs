//! CPU kernels for the forward pass besides the matrix products (`matrix.rs`): dot, RMSNorm,
//! RoPE (interleaved pairs as llama.cpp lays out GGUF weights, or halves as Hugging Face does),
//! SiLU, GELU and softmax. Plain loops written so LLVM vectorises them.

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

/// The `(sin, cos)` of each rotation angle at `pos`, from precomputed inverse frequencies, both
/// times `scale` (LongRoPE's attention factor; 1 for plain RoPE).
pub fn rotations(pos: usize, inv_freq: &[f32], scale: f32) -> Vec<(f32, f32)> {
    inv_freq
        .iter()
        .map(|&f| {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            (sin * scale, cos * scale)
        })
        .collect()
}

/// Rotate one head vector in place by the angles of `rotations`.
pub fn rope(head: &mut [f32], rot: &[(f32, f32)], style: RopeStyle) {
    let half = rot.len();
    for (i, &(sin, cos)) in rot.iter().enumerate() {
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

/// GELU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`, Gemma's activation).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// Softmax in place.
#[inline]
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
        rope(&mut a, &rotations(1, &inv, 1.0), RopeStyle::Interleaved);
        // Halves layout of the same logical pairs: (x0, x2) and (x1, x3).
        let mut b = [1.0, 1.0, 0.0, 0.0];
        rope(&mut b, &rotations(1, &inv, 1.0), RopeStyle::Halves);
        assert!((a[0] - b[0]).abs() < 1e-6 && (a[1] - b[2]).abs() < 1e-6);
        assert!((a[2] - b[1]).abs() < 1e-6 && (a[3] - b[3]).abs() < 1e-6);
        assert!((a[0] - 1f32.cos()).abs() < 1e-6 && (a[1] - 1f32.sin()).abs() < 1e-6);
        // Position 0 is the identity.
        let mut c = [0.3, -0.2, 0.5, 0.9];
        rope(&mut c, &rotations(0, &inv, 1.0), RopeStyle::Interleaved);
        assert_eq!(c, [0.3, -0.2, 0.5, 0.9]);
    }
}
