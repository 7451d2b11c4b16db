//! Weight matrices kept in their quantized form (Q4_1, Q8_0) or as f32. As llama.cpp does, the
//! activations are quantized to 8 bits per 32-value block for the quantized products, which then
//! run on integers (AVX2 `maddubs` where the CPU has it, a portable loop otherwise; both compute
//! the same integer sums). Decode reads the 4-bit weights, not an f32 copy. Rows are split over
//! rayon's pool.

use rayon::prelude::*;

use crate::model::quant::{GgmlType, half_to_f32};

const QK: usize = 32;

/// How matrix products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Quantized weights stay quantized and activations are quantized to 8 bits, as llama.cpp does.
    #[default]
    Fast,
    /// Weights dequantized to f32 at load, activations in f32: slower, for checking the model's
    /// math against an exact reference.
    Exact,
}

/// Storage of a `rows × cols` row-major matrix.
#[derive(Debug)]
enum Storage {
    F32(Vec<f32>),
    /// Per 32-value block: scale `d` and minimum `m` (as f32) and 16 bytes of nibbles
    /// (low nibbles are values 0..16, high nibbles 16..32).
    Q4_1 {
        dm: Vec<[f32; 2]>,
        qs: Vec<[u8; 16]>,
    },
    /// Per block: scale `d` and 32 signed bytes.
    Q8_0 {
        d: Vec<f32>,
        qs: Vec<[i8; 32]>,
    },
}

#[derive(Debug)]
pub struct Matrix {
    storage: Storage,
    pub rows: usize,
    pub cols: usize,
}

impl Matrix {
    pub fn from_f32(w: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols);
        Self { storage: Storage::F32(w), rows, cols }
    }

    /// From a GGUF tensor's raw bytes; types without a kernel of their own are dequantized to f32,
    /// and so is everything with `Precision::Exact`.
    pub fn from_ggml(dtype: GgmlType, bytes: &[u8], rows: usize, cols: usize, precision: Precision) -> Option<Self> {
        let blocks = rows * cols / QK;
        let storage = match dtype {
            _ if precision == Precision::Exact => {
                Storage::F32(crate::model::quant::dequantize(dtype, bytes, rows * cols)?)
            }
            GgmlType::Q4_1 if cols.is_multiple_of(QK) && bytes.len() == blocks * 20 => {
                let mut dm = Vec::with_capacity(blocks);
                let mut qs = Vec::with_capacity(blocks);
                for b in bytes.chunks_exact(20) {
                    dm.push([
                        half_to_f32(u16::from_le_bytes([b[0], b[1]])),
                        half_to_f32(u16::from_le_bytes([b[2], b[3]])),
                    ]);
                    qs.push(b[4..20].try_into().expect("16 bytes"));
                }
                Storage::Q4_1 { dm, qs }
            }
            GgmlType::Q8_0 if cols.is_multiple_of(QK) && bytes.len() == blocks * 34 => {
                let mut d = Vec::with_capacity(blocks);
                let mut qs = Vec::with_capacity(blocks);
                for b in bytes.chunks_exact(34) {
                    d.push(half_to_f32(u16::from_le_bytes([b[0], b[1]])));
                    let mut q = [0i8; 32];
                    for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                        *o = v as i8;
                    }
                    qs.push(q);
                }
                Storage::Q8_0 { d, qs }
            }
            other => Storage::F32(crate::model::quant::dequantize(other, bytes, rows * cols)?),
        };
        Some(Self { storage, rows, cols })
    }

    /// The rows of several matrices with the same column count, one after the other (fused
    /// projections: one pass over the input for q, k and v). Mixed storage falls back to f32.
    pub fn stack(parts: Vec<Matrix>) -> Matrix {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|m| m.cols == cols), "stacked matrices share their column count");
        let rows = parts.iter().map(|m| m.rows).sum();
        let storage = match &parts[0].storage {
            Storage::Q4_1 { .. } if parts.iter().all(|m| matches!(m.storage, Storage::Q4_1 { .. })) => {
                let (mut dm, mut qs) = (Vec::new(), Vec::new());
                for m in parts {
                    if let Storage::Q4_1 { dm: d, qs: q } = m.storage {
                        dm.extend(d);
                        qs.extend(q);
                    }
                }
                Storage::Q4_1 { dm, qs }
            }
            Storage::Q8_0 { .. } if parts.iter().all(|m| matches!(m.storage, Storage::Q8_0 { .. })) => {
                let (mut ds, mut qs) = (Vec::new(), Vec::new());
                for m in parts {
                    if let Storage::Q8_0 { d, qs: q } = m.storage {
                        ds.extend(d);
                        qs.extend(q);
                    }
                }
                Storage::Q8_0 { d: ds, qs }
            }
            _ => {
                let mut w = vec![0.0f32; rows * cols];
                let mut at = 0;
                for m in &parts {
                    for r in 0..m.rows {
                        m.row(r, &mut w[at * cols..(at + 1) * cols]);
                        at += 1;
                    }
                }
                Storage::F32(w)
            }
        };
        Matrix { storage, rows, cols }
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        match &self.storage {
            Storage::F32(w) => out.copy_from_slice(&w[r * self.cols..(r + 1) * self.cols]),
            Storage::Q4_1 { dm, qs } => {
                for b in 0..nb {
                    let ([d, m], q) = (dm[r * nb + b], &qs[r * nb + b]);
                    let o = &mut out[b * QK..(b + 1) * QK];
                    for j in 0..16 {
                        o[j] = f32::from(q[j] & 15) * d + m;
                        o[j + 16] = f32::from(q[j] >> 4) * d + m;
                    }
                }
            }
            Storage::Q8_0 { d, qs } => {
                for b in 0..nb {
                    for (o, &q) in out[b * QK..(b + 1) * QK].iter_mut().zip(&qs[r * nb + b]) {
                        *o = f32::from(q) * d[r * nb + b];
                    }
                }
            }
        }
    }

    /// `out[t][o] = x[t] · row(o) (+ bias[o])` for the `n` rows of `x`. `scratch` is reused
    /// between calls.
    pub fn matmul(&self, x: &[f32], n: usize, bias: Option<&[f32]>, out: &mut [f32], scratch: &mut Vec<f32>) {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(x.len(), n * cols, "matmul input");
        assert_eq!(out.len(), n * rows, "matmul output");
        let qx: Vec<Q8Block> = if matches!(self.storage, Storage::F32(_)) { Vec::new() } else { quantize_rows(x) };
        let nb = cols / QK;
        // Compute transposed (`[o][t]`) so each task owns whole weight rows, then transpose back.
        scratch.resize(rows * n, 0.0);
        const ROWS_PER_TASK: usize = 16;
        let avx2 = has_avx2_fma();
        scratch.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(task, chunk)| {
            for (i, cell) in chunk.chunks_exact_mut(n).enumerate() {
                let o = task * ROWS_PER_TASK + i;
                let b = bias.map_or(0.0, |b| b[o]);
                let mut t = 0;
                // Four input rows at a time share each unpacked weight block.
                while t + 4 <= n && !matches!(self.storage, Storage::F32(_)) {
                    let xs = [
                        &qx[t * nb..(t + 1) * nb],
                        &qx[(t + 1) * nb..(t + 2) * nb],
                        &qx[(t + 2) * nb..(t + 3) * nb],
                        &qx[(t + 3) * nb..(t + 4) * nb],
                    ];
                    let v = match &self.storage {
                        Storage::Q4_1 { dm, qs } => {
                            dot_q4_1_q8_x4(avx2, &dm[o * nb..(o + 1) * nb], &qs[o * nb..(o + 1) * nb], xs)
                        }
                        Storage::Q8_0 { d, qs } => {
                            dot_q8_0_q8_x4(avx2, &d[o * nb..(o + 1) * nb], &qs[o * nb..(o + 1) * nb], xs)
                        }
                        Storage::F32(_) => unreachable!("excluded by the loop condition"),
                    };
                    for (k, v) in v.into_iter().enumerate() {
                        cell[t + k] = v + b;
                    }
                    t += 4;
                }
                for (t, c) in cell.iter_mut().enumerate().skip(t) {
                    let v = match &self.storage {
                        Storage::F32(w) => kernel_f32(avx2, &w[o * cols..(o + 1) * cols], &x[t * cols..(t + 1) * cols]),
                        Storage::Q4_1 { dm, qs } => dot_q4_1_q8(
                            avx2,
                            &dm[o * nb..(o + 1) * nb],
                            &qs[o * nb..(o + 1) * nb],
                            &qx[t * nb..(t + 1) * nb],
                        ),
                        Storage::Q8_0 { d, qs } => dot_q8_0_q8(
                            avx2,
                            &d[o * nb..(o + 1) * nb],
                            &qs[o * nb..(o + 1) * nb],
                            &qx[t * nb..(t + 1) * nb],
                        ),
                    };
                    *c = v + b;
                }
            }
        });
        for o in 0..rows {
            for t in 0..n {
                out[t * rows + o] = scratch[o * n + t];
            }
        }
    }
}

/// 32 activations as 8-bit integers: `x ≈ d · q`, and `s = d · Σ q` (for Q4_1's minimum term).
#[derive(Clone, Copy, Debug)]
struct Q8Block {
    d: f32,
    s: f32,
    q: [i8; 32],
}

fn quantize_rows(x: &[f32]) -> Vec<Q8Block> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        fn fast(x: &[f32]) -> Vec<Q8Block> {
            quantize_rows_portable(x)
        }
        // SAFETY: the CPU reports AVX2 and FMA.
        return unsafe { fast(x) };
    }
    quantize_rows_portable(x)
}

#[inline(always)]
fn quantize_rows_portable(x: &[f32]) -> Vec<Q8Block> {
    x.chunks_exact(QK)
        .map(|c| {
            let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut q = [0i8; 32];
            let mut sum = 0i32;
            for (o, &v) in q.iter_mut().zip(c) {
                *o = (v * inv).round() as i8;
                sum += i32::from(*o);
            }
            Q8Block { d, s: d * sum as f32, q }
        })
        .collect()
}

fn dot_q4_1_q8(avx2: bool, dm: &[[f32; 2]], qs: &[[u8; 16]], x: &[Q8Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU reports AVX2 and FMA (`has_avx2_fma`).
        return unsafe { avx2_kernels::dot_q4_1_q8(dm, qs, x) };
    }
    let _ = avx2;
    let mut sum = 0.0f32;
    for ((&[d, m], q), xb) in dm.iter().zip(qs).zip(x) {
        let (lo, hi) = xb.q.split_at(16);
        let isum: i32 = q
            .iter()
            .zip(lo.iter().zip(hi))
            .map(|(&w, (&a, &b))| i32::from(w & 15) * i32::from(a) + i32::from(w >> 4) * i32::from(b))
            .sum();
        sum += d * xb.d * isum as f32 + m * xb.s;
    }
    sum
}

/// `dot_q4_1_q8` for four activation rows at once.
fn dot_q4_1_q8_x4(avx2: bool, dm: &[[f32; 2]], qs: &[[u8; 16]], x: [&[Q8Block]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU reports AVX2 and FMA (`has_avx2_fma`).
        return unsafe { avx2_kernels::dot_q4_1_q8_x4(dm, qs, x) };
    }
    x.map(|xr| dot_q4_1_q8(avx2, dm, qs, xr))
}

/// `dot_q8_0_q8` for four activation rows at once.
fn dot_q8_0_q8_x4(avx2: bool, d: &[f32], qs: &[[i8; 32]], x: [&[Q8Block]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU reports AVX2 and FMA (`has_avx2_fma`).
        return unsafe { avx2_kernels::dot_q8_0_q8_x4(d, qs, x) };
    }
    x.map(|xr| dot_q8_0_q8(avx2, d, qs, xr))
}

fn dot_q8_0_q8(avx2: bool, d: &[f32], qs: &[[i8; 32]], x: &[Q8Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: as above.
        return unsafe { avx2_kernels::dot_q8_0_q8(d, qs, x) };
    }
    let _ = avx2;
    let mut sum = 0.0f32;
    for ((&d, q), xb) in d.iter().zip(qs).zip(x) {
        let isum: i32 = q.iter().zip(&xb.q).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
        sum += d * xb.d * isum as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2_kernels {
    use std::arch::x86_64::*;

    use super::Q8Block;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Σ over blocks of `d·dx·Σ q4·q8 + m·s`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_q4_1_q8(dm: &[[f32; 2]], qs: &[[u8; 16]], x: &[Q8Block]) -> f32 {
        let mask = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0.0f32;
        for ((&[d, m], q), xb) in dm.iter().zip(qs).zip(x) {
            // SAFETY: `q` holds 16 bytes and `xb.q` 32; the loads are unaligned.
            let (raw, xq) = unsafe { (_mm_loadu_si128(q.as_ptr().cast()), _mm256_loadu_si256(xb.q.as_ptr().cast())) };
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            let w = _mm256_set_m128i(hi, lo);
            let ints = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq), ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(ints), acc);
            mins += m * xb.s;
        }
        hsum(acc) + mins
    }

    /// `dot_q4_1_q8` for four activation rows, unpacking each weight block once.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_q4_1_q8_x4(dm: &[[f32; 2]], qs: &[[u8; 16]], x: [&[Q8Block]; 4]) -> [f32; 4] {
        let mask = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0.0f32; 4];
        for (b, (&[d, m], q)) in dm.iter().zip(qs).enumerate() {
            // SAFETY: `q` holds 16 bytes; the load is unaligned.
            let raw = unsafe { _mm_loadu_si128(q.as_ptr().cast()) };
            let w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
            for k in 0..4 {
                let xb = &x[k][b];
                // SAFETY: `xb.q` holds 32 bytes; the load is unaligned.
                let xq = unsafe { _mm256_loadu_si256(xb.q.as_ptr().cast()) };
                let ints = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq), ones);
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(ints), acc[k]);
                mins[k] += m * xb.s;
            }
        }
        [hsum(acc[0]) + mins[0], hsum(acc[1]) + mins[1], hsum(acc[2]) + mins[2], hsum(acc[3]) + mins[3]]
    }

    /// `dot_q8_0_q8` for four activation rows, taking each weight block's sign apart once.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_q8_0_q8_x4(d: &[f32], qs: &[[i8; 32]], x: [&[Q8Block]; 4]) -> [f32; 4] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, (&d, q)) in d.iter().zip(qs).enumerate() {
            // SAFETY: `q` holds 32 bytes; the load is unaligned.
            let w = unsafe { _mm256_loadu_si256(q.as_ptr().cast()) };
            let aw = _mm256_sign_epi8(w, w);
            for k in 0..4 {
                let xb = &x[k][b];
                // SAFETY: `xb.q` holds 32 bytes; the load is unaligned.
                let xq = unsafe { _mm256_loadu_si256(xb.q.as_ptr().cast()) };
                let ints = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq, w)), ones);
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(ints), acc[k]);
            }
        }
        [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
    }

    /// Σ over blocks of `d·dx·Σ q·q8`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_q8_0_q8(d: &[f32], qs: &[[i8; 32]], x: &[Q8Block]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for ((&d, q), xb) in d.iter().zip(qs).zip(x) {
            // SAFETY: both hold 32 bytes; the loads are unaligned.
            let (w, xq) = unsafe { (_mm256_loadu_si256(q.as_ptr().cast()), _mm256_loadu_si256(xb.q.as_ptr().cast())) };
            // maddubs multiplies unsigned by signed: move w's sign onto x.
            let ints = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w)), ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(ints), acc);
        }
        hsum(acc)
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Each kernel twice: the portable body, and the same body compiled with AVX2 and FMA, chosen by
/// `avx2` (which is true only when the CPU has both).
macro_rules! kernel {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name(avx2: bool, $($arg: $ty),*) -> f32 {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) -> f32 {
                    $body($($arg),*)
                }
                // SAFETY: `avx2` is true only when the CPU reports AVX2 and FMA (`has_avx2_fma`).
                return unsafe { fast($($arg),*) };
            }
            let _ = avx2;
            $body($($arg),*)
        }
    };
}

kernel!(kernel_f32, dot_f32, (w: &[f32], x: &[f32]));

#[inline(always)]
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for j in 0..8 {
            acc[j] += a[j] * b[j];
        }
    }
    acc.iter().sum::<f32>() + wr.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(m: &Matrix, x: &[f32], n: usize) -> Vec<f32> {
        let mut row = vec![0.0; m.cols];
        let mut out = vec![0.0; n * m.rows];
        for o in 0..m.rows {
            m.row(o, &mut row);
            for t in 0..n {
                out[t * m.rows + o] = (0..m.cols).map(|i| row[i] * x[t * m.cols + i]).sum();
            }
        }
        out
    }

    fn q_bytes(dtype: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
        let per = if dtype == GgmlType::Q4_1 { 20 } else { 34 };
        (0..rows * cols / QK)
            .flat_map(|b| {
                let mut block = vec![0u8; per];
                // d = 0.5 (0x3800), m = -1.0 (0xbc00) for Q4_1; d = 0.25 (0x3400) for Q8_0.
                if per == 20 {
                    block[..4].copy_from_slice(&[0x00, 0x38, 0x00, 0xbc]);
                } else {
                    block[..2].copy_from_slice(&[0x00, 0x34]);
                }
                for (j, v) in block[if per == 20 { 4 } else { 2 }..].iter_mut().enumerate() {
                    *v = ((b * 31 + j * 7) % 251) as u8;
                }
                block
            })
            .collect()
    }

    #[test]
    fn quantized_products_match_dequantized_ones() {
        let (rows, cols, n) = (40, 96, 3);
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.1).collect();
        for dtype in [GgmlType::Q4_1, GgmlType::Q8_0] {
            let bytes = q_bytes(dtype, rows, cols);
            let m = Matrix::from_ggml(dtype, &bytes, rows, cols, Precision::Fast).unwrap();
            // Rows decode as the shared dequantizer says.
            let deq = crate::model::quant::dequantize(dtype, &bytes, rows * cols).unwrap();
            let mut row = vec![0.0; cols];
            m.row(7, &mut row);
            assert_eq!(row, deq[7 * cols..8 * cols]);
            let mut out = vec![0.0; n * rows];
            m.matmul(&x, n, None, &mut out, &mut Vec::new());
            // 8-bit activations: within 1% of the scale of the f32 product.
            let exact = reference(&m, &x, n);
            let scale = exact.iter().fold(0.0f32, |a, b| a.max(b.abs()));
            for (a, b) in out.iter().zip(&exact) {
                assert!((a - b).abs() <= 1e-2 * scale, "{dtype}: {a} vs {b}");
            }
            // Batched rows give bit-identical results to one row alone (batch-invariant output).
            let x4: Vec<f32> = (0..4).flat_map(|k| x[(k % n) * cols..(k % n + 1) * cols].to_vec()).collect();
            let mut out4 = vec![0.0; 4 * rows];
            m.matmul(&x4, 4, None, &mut out4, &mut Vec::new());
            for k in 0..4 {
                let mut one = vec![0.0; rows];
                m.matmul(&x4[k * cols..(k + 1) * cols], 1, None, &mut one, &mut Vec::new());
                assert_eq!(one, out4[k * rows..(k + 1) * rows], "{dtype}: row {k} of 4");
            }
            // The AVX2 and portable kernels compute the same integer sums.
            let qx = quantize_rows(&x[..cols]);
            let nb = cols / QK;
            for o in 0..rows {
                let (fast, portable) = match &m.storage {
                    Storage::Q4_1 { dm, qs } => {
                        let (dm, qs) = (&dm[o * nb..(o + 1) * nb], &qs[o * nb..(o + 1) * nb]);
                        (dot_q4_1_q8(has_avx2_fma(), dm, qs, &qx), dot_q4_1_q8(false, dm, qs, &qx))
                    }
                    Storage::Q8_0 { d, qs } => {
                        let (d, qs) = (&d[o * nb..(o + 1) * nb], &qs[o * nb..(o + 1) * nb]);
                        (dot_q8_0_q8(has_avx2_fma(), d, qs, &qx), dot_q8_0_q8(false, d, qs, &qx))
                    }
                    Storage::F32(_) => unreachable!(),
                };
                assert!(
                    (fast - portable).abs() <= 1e-5 * portable.abs().max(1.0),
                    "{dtype} row {o}: {fast} vs {portable}"
                );
            }
        }
        let f = Matrix::from_f32((0..rows * cols).map(|i| i as f32 * 1e-3).collect(), rows, cols);
        let bias: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let mut out = vec![0.0; n * rows];
        f.matmul(&x, n, Some(&bias), &mut out, &mut Vec::new());
        for (i, (a, b)) in out.iter().zip(reference(&f, &x, n)).enumerate() {
            assert!((a - (b + bias[i % rows])).abs() < 1e-3, "f32 [{i}]");
        }
    }
}
