//! Weight matrices kept in their quantized form (Q4_1, Q8_0, and the k-quants Q4_K and Q6_K) or
//! as f32. As llama.cpp does, the activations are quantized to 8 bits per 32-value block for the
//! quantized products, which then run on integers. Quantized rows are regrouped eight at a time
//! at load (`layout`, `kquant`) so the x86 kernels (`x86`: AVX-VNNI, AVX-512 VNNI or AVX2, chosen
//! at run time) produce eight rows per instruction; a portable loop computes the same integer sums
//! elsewhere. Groups of rows are split over the compute threads (`threads`).

mod kquant;
mod layout;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::OnceCell;
use std::sync::OnceLock;

use super::threads::{SharedMut, for_each_chunk_mut, for_each_task, threads};
use crate::model::quant::GgmlType;
use kquant::{KRows, Q4KBlock, Q6KBlock, QK_K, q4_k_portable, q6_k_portable};
use layout::{LANES, Q4_1Rows, Q5_0Rows, Q8_0Rows, Q8Block, QK, quantize_rows};

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
    Q4_1(Q4_1Rows),
    Q8_0(Q8_0Rows),
    Q5_0(Q5_0Rows),
    Q4K(KRows<Q4KBlock>),
    Q6K(KRows<Q6KBlock>),
    /// Matrices of different storage, their rows one after the other (a fused projection whose
    /// parts were quantized differently, as Q4_K_M files do with q, k and v).
    Stacked(Vec<Matrix>),
}

#[derive(Debug)]
pub struct Matrix {
    storage: Storage,
    pub rows: usize,
    pub cols: usize,
}

/// The integer kernels this CPU can run, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    AvxVnni,
    Avx512Vnni,
    Avx2,
    Portable,
}

impl Isa {
    fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::is_x86_feature_detected as has;
                if has!("avx2") && has!("fma") {
                    if has!("avx512f") && has!("avx512vl") && has!("avx512vnni") {
                        return Isa::Avx512Vnni;
                    }
                    if has!("avxvnni") {
                        return Isa::AvxVnni;
                    }
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    /// Every kernel this CPU can run (for tests that compare them).
    #[cfg(test)]
    fn available() -> Vec<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            [Isa::AvxVnni, Isa::Avx512Vnni, Isa::Avx2, Isa::Portable]
                .into_iter()
                .filter(|isa| match isa {
                    Isa::AvxVnni => avx2 && has!("avxvnni"),
                    Isa::Avx512Vnni => avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512vnni"),
                    Isa::Avx2 => avx2,
                    Isa::Portable => true,
                })
                .collect()
        }
        #[cfg(not(target_arch = "x86_64"))]
        vec![Isa::Portable]
    }
}

/// Run a tile through the kernel for its size and the chosen instruction set.
macro_rules! dispatch {
    ($isa:expr, $tile:expr, $kernel:ident, $portable:ident, ($($w:expr),*)) => {
        match $tile {
            Tile::One(x) => pad(dispatch!(@isa $isa, $kernel, $portable, ($($w),*), x)),
            Tile::Two(x) => pad(dispatch!(@isa $isa, $kernel, $portable, ($($w),*), x)),
            Tile::Three(x) => pad(dispatch!(@isa $isa, $kernel, $portable, ($($w),*), x)),
            Tile::Four(x) => dispatch!(@isa $isa, $kernel, $portable, ($($w),*), x),
        }
    };
    (@isa $isa:expr, $kernel:ident, $portable:ident, ($($w:expr),*), $x:ident) => {
        match $isa {
            // SAFETY: `Isa::detect` and `Isa::available` name an instruction set only where the
            // CPU reports it.
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => unsafe { x86::avxvnni::$kernel($($w),*, $x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { x86::avx512vnni::$kernel($($w),*, $x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::avx2::$kernel($($w),*, $x) },
            _ => $x.map(|x| $portable($($w),*, x)),
        }
    };
}

impl Matrix {
    pub fn from_f32(w: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols);
        Self { storage: Storage::F32(w), rows, cols }
    }

    /// From a GGUF tensor's raw bytes. With `Precision::Fast`, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K
    /// keep kernels of their own; Q4_0, Q5_1 and Q5_K have none and are requantized to Q8_0 (8
    /// bits for weights that had 4 to 5). F32, F16 and BF16, row counts that are not a multiple of
    /// 8, and everything with `Precision::Exact`, are dequantized to f32.
    pub fn from_ggml(dtype: GgmlType, bytes: &[u8], rows: usize, cols: usize, precision: Precision) -> Option<Self> {
        let blocks = rows * cols / QK;
        let grouped = precision == Precision::Fast && cols.is_multiple_of(QK) && rows.is_multiple_of(LANES);
        let super_blocks = cols.is_multiple_of(QK_K).then_some(rows * cols / QK_K);
        let storage = match dtype {
            GgmlType::Q4_1 if grouped && bytes.len() == blocks * 20 => {
                Storage::Q4_1(Q4_1Rows::from_ggml(bytes, rows, cols))
            }
            GgmlType::Q8_0 if grouped && bytes.len() == blocks * 34 => {
                Storage::Q8_0(Q8_0Rows::from_ggml(bytes, rows, cols))
            }
            GgmlType::Q5_0 if grouped && bytes.len() == blocks * 22 => {
                Storage::Q5_0(Q5_0Rows::from_ggml(bytes, rows, cols))
            }
            GgmlType::Q4_K if grouped && super_blocks.map(|n| n * 144) == Some(bytes.len()) => {
                Storage::Q4K(KRows::from_q4_k(bytes, rows, cols))
            }
            GgmlType::Q6_K if grouped && super_blocks.map(|n| n * 210) == Some(bytes.len()) => {
                Storage::Q6K(KRows::from_q6_k(bytes, rows, cols))
            }
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
                if grouped =>
            {
                let values = crate::model::quant::dequantize(dtype, bytes, rows * cols)?;
                Storage::Q8_0(Q8_0Rows::from_f32(&values, rows, cols))
            }
            other => Storage::F32(crate::model::quant::dequantize(other, bytes, rows * cols)?),
        };
        Some(Self { storage, rows, cols })
    }

    /// The rows of several matrices with the same column count, one after the other (fused
    /// projections: one pass over the input for q, k and v). Parts of one quantized storage are
    /// joined into it; parts of different storage keep theirs, side by side.
    pub fn stack(parts: Vec<Matrix>) -> Matrix {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|m| m.cols == cols), "stacked matrices share their column count");
        let rows = parts.iter().map(|m| m.rows).sum();
        let kind = std::mem::discriminant(&parts[0].storage);
        let same = parts.iter().all(|m| std::mem::discriminant(&m.storage) == kind);
        if !same || matches!(parts[0].storage, Storage::Stacked(_)) {
            return Matrix { storage: Storage::Stacked(parts), rows, cols };
        }
        let mut parts = parts.into_iter().map(|m| m.storage);
        let mut storage = parts.next().expect("at least one part");
        for part in parts {
            match (&mut storage, part) {
                (Storage::F32(all), Storage::F32(w)) => all.extend(w),
                (Storage::Q4_1(all), Storage::Q4_1(r)) => all.append(r),
                (Storage::Q8_0(all), Storage::Q8_0(r)) => all.append(r),
                (Storage::Q5_0(all), Storage::Q5_0(r)) => all.append(r),
                (Storage::Q4K(all), Storage::Q4K(r)) => all.append(r),
                (Storage::Q6K(all), Storage::Q6K(r)) => all.append(r),
                _ => unreachable!("the parts share one storage"),
            }
        }
        Matrix { storage, rows, cols }
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        match &self.storage {
            Storage::F32(w) => out.copy_from_slice(&w[r * self.cols..(r + 1) * self.cols]),
            Storage::Q4_1(q) => q.row(r, out),
            Storage::Q8_0(q) => q.row(r, out),
            Storage::Q5_0(q) => q.row(r, out),
            Storage::Q4K(q) => q.row(r, out),
            Storage::Q6K(q) => q.row(r, out),
            Storage::Stacked(parts) => {
                let mut r = r;
                for p in parts {
                    if r < p.rows {
                        return p.row(r, out);
                    }
                    r -= p.rows;
                }
                panic!("row out of range");
            }
        }
    }

    /// Bytes the weights take in memory.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(w) => w.len() * 4,
            Storage::Q4_1(q) => q.d.len() * (2 * size_of::<[f32; LANES]>() + size_of::<[u8; 128]>()),
            Storage::Q8_0(q) => q.d.len() * (size_of::<[f32; LANES]>() + size_of::<[i32; LANES]>() + 256),
            Storage::Q5_0(q) => q.d.len() * (size_of::<[f32; LANES]>() + 128 + 32),
            Storage::Q4K(q) => q.bytes(),
            Storage::Q6K(q) => q.bytes(),
            Storage::Stacked(parts) => parts.iter().map(Matrix::bytes).sum(),
        }
    }

    /// The same rows requantized to Q8_0, the form k-quants ran in before they had kernels of
    /// their own (the baseline of `benches/kquant.rs`). `None` where the shape has no Q8_0 form.
    pub fn requantized_q8_0(&self) -> Option<Matrix> {
        if !self.rows.is_multiple_of(LANES) || !self.cols.is_multiple_of(QK) {
            return None;
        }
        let mut values = vec![0.0; self.rows * self.cols];
        for (r, row) in values.chunks_exact_mut(self.cols).enumerate() {
            self.row(r, row);
        }
        Some(Matrix { storage: Storage::Q8_0(Q8_0Rows::from_f32(&values, self.rows, self.cols)), ..*self })
    }

    /// `out[t][o] = x[t] · row(o) (+ bias[o])` for the `n` rows of `x`. `scratch` is reused
    /// between calls.
    pub fn matmul(&self, x: &[f32], n: usize, bias: Option<&[f32]>, out: &mut [f32], scratch: &mut Vec<f32>) {
        self.matmul_with(Isa::detect(), x, n, bias, out, scratch)
    }

    fn matmul_with(
        &self,
        isa: Isa,
        x: &[f32],
        n: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        self.product(isa, x, &OnceCell::new(), n, bias, out, scratch)
    }

    /// `matmul_with`, the activations quantized once into `qx` for every quantized part of the
    /// matrix (the parts of a stacked one share them).
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        isa: Isa,
        x: &[f32],
        qx: &OnceCell<Vec<Q8Block>>,
        n: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let rows = self.rows;
        assert_eq!(x.len(), n * self.cols, "matmul input");
        assert_eq!(out.len(), n * rows, "matmul output");
        if n == 0 {
            return;
        }
        // Each task owns whole groups of eight rows.
        let groups = rows.div_ceil(LANES);
        let per_task = (groups / (4 * threads())).clamp(1, 16);
        let nb = self.cols / QK;
        match &self.storage {
            Storage::F32(w) => {
                // Computed as `[o][t]`, then moved into place.
                let cols = self.cols;
                scratch.resize(rows * n, 0.0);
                for_each_chunk_mut(scratch, per_task * LANES * n, |task, chunk| {
                    for (i, cell) in chunk.chunks_exact_mut(n).enumerate() {
                        let o = task * per_task * LANES + i;
                        for (t, c) in cell.iter_mut().enumerate() {
                            *c = dot_f32(isa, &w[o * cols..(o + 1) * cols], &x[t * cols..(t + 1) * cols]);
                        }
                    }
                });
                for o in 0..rows {
                    let b = bias.map_or(0.0, |b| b[o]);
                    for t in 0..n {
                        out[t * rows + o] = scratch[o * n + t] + b;
                    }
                }
            }
            Storage::Q4_1(w) => {
                // With 32 vector registers, two groups share each activation broadcast.
                let pairs = isa == Isa::Avx512Vnni;
                let per_task = if pairs { per_task.next_multiple_of(2) } else { per_task };
                grouped(n, nb, qx.get_or_init(|| quantize_rows(x, n)), per_task, pairs, bias, out, |tile, g, count| {
                    let r = |g: usize| g * nb..(g + 1) * nb;
                    let one = |g: usize| (&w.d[r(g)], &w.m[r(g)], &w.qs[r(g)]);
                    if count == 2 {
                        return q4_1_pair(isa, [one(g), one(g + 1)], tile);
                    }
                    let (d, m, qs) = one(g);
                    [q4_1_group(isa, d, m, qs, tile), [[0.0; LANES]; 4]]
                })
            }
            Storage::Q8_0(w) => {
                grouped(n, nb, qx.get_or_init(|| quantize_rows(x, n)), per_task, false, bias, out, |tile, g, _| {
                    let r = g * nb..(g + 1) * nb;
                    [q8_0_group(isa, &w.d[r.clone()], &w.offset[r.clone()], &w.qs[r], tile), [[0.0; LANES]; 4]]
                })
            }
            Storage::Q5_0(w) => {
                grouped(n, nb, qx.get_or_init(|| quantize_rows(x, n)), per_task, false, bias, out, |tile, g, _| {
                    let r = g * nb..(g + 1) * nb;
                    let (d, qs, qh) = (&w.d[r.clone()], &w.qs[r.clone()], &w.qh[r]);
                    [dispatch!(isa, tile, q5_0, q5_0_portable, (d, qs, qh)), [[0.0; LANES]; 4]]
                })
            }
            Storage::Q4K(w) => {
                grouped(n, nb, qx.get_or_init(|| quantize_rows(x, n)), per_task, false, bias, out, |tile, g, _| {
                    let nsb = nb * QK / QK_K;
                    [dispatch!(isa, tile, q4_k, q4_k_portable, (&w.blocks[g * nsb..(g + 1) * nsb])), [[0.0; LANES]; 4]]
                })
            }
            Storage::Q6K(w) => {
                grouped(n, nb, qx.get_or_init(|| quantize_rows(x, n)), per_task, false, bias, out, |tile, g, _| {
                    let nsb = nb * QK / QK_K;
                    [dispatch!(isa, tile, q6_k, q6_k_portable, (&w.blocks[g * nsb..(g + 1) * nsb])), [[0.0; LANES]; 4]]
                })
            }
            Storage::Stacked(parts) => {
                // Each part into its own buffer, then into its columns of `out`; the activations
                // are quantized once for all of them.
                let mut at = 0;
                let mut part_out = Vec::new();
                for p in parts {
                    part_out.resize(n * p.rows, 0.0);
                    p.product(isa, x, qx, n, bias.map(|b| &b[at..at + p.rows]), &mut part_out, scratch);
                    for (dst, src) in out.chunks_exact_mut(rows).zip(part_out.chunks_exact(p.rows)) {
                        dst[at..at + p.rows].copy_from_slice(src);
                    }
                    at += p.rows;
                }
            }
        }
    }
}

/// Run `kernel` for every group of eight rows (two at a time with `pairs`: `kernel(tile, g, 2)`
/// computes groups `g` and `g + 1`) and every tile of up to four of the `n` rows of `qx` (`nb`
/// blocks each), writing `out[t][8g..8g + 8]` (plus the bias) from the task that owns group `g`.
#[allow(clippy::too_many_arguments)]
fn grouped<K>(
    n: usize,
    nb: usize,
    qx: &[Q8Block],
    per_task: usize,
    pairs: bool,
    bias: Option<&[f32]>,
    out: &mut [f32],
    kernel: K,
) where
    K: Fn(Tile<'_>, usize, usize) -> [[[f32; LANES]; 4]; 2] + Sync,
{
    let rows = out.len() / n;
    let groups = rows / LANES;
    let base = SharedMut::new(out);
    for_each_task(groups.div_ceil(per_task), &|task| {
        let end = ((task + 1) * per_task).min(groups);
        let mut g = task * per_task;
        while g < end {
            let count = if pairs { (end - g).min(2) } else { 1 };
            let mut t = 0;
            while t < n {
                let take = (n - t).min(4);
                let xs = |k: usize| &qx[(t + k) * nb..(t + k + 1) * nb];
                let tile = match take {
                    4 => Tile::Four([xs(0), xs(1), xs(2), xs(3)]),
                    3 => Tile::Three([xs(0), xs(1), xs(2)]),
                    2 => Tile::Two([xs(0), xs(1)]),
                    _ => Tile::One([xs(0)]),
                };
                let res = kernel(tile, g, count);
                for (gi, res) in res.iter().enumerate().take(count) {
                    let g = g + gi;
                    for (k, res) in res.iter().enumerate().take(take) {
                        // SAFETY: the eight outputs of group `g` for row `t + k` are written by
                        // this task only (it alone owns group `g`), and lie inside `out`.
                        let dst = unsafe { base.slice((t + k) * rows + g * LANES, LANES) };
                        match bias {
                            Some(b) => dst.iter_mut().zip(res).zip(&b[g * LANES..]).for_each(|((o, r), b)| *o = r + b),
                            None => dst.copy_from_slice(res),
                        }
                    }
                }
                t += take;
            }
            g += count;
        }
    });
}

/// Up to four rows of quantized activations that share each unpacked weight vector.
#[derive(Clone, Copy)]
enum Tile<'a> {
    One([&'a [Q8Block]; 1]),
    Two([&'a [Q8Block]; 2]),
    Three([&'a [Q8Block]; 3]),
    Four([&'a [Q8Block]; 4]),
}

/// A tile's results padded to four rows.
fn pad<const N: usize>(r: [[f32; LANES]; N]) -> [[f32; LANES]; 4] {
    let mut out = [[0.0; LANES]; 4];
    out[..N].copy_from_slice(&r);
    out
}

fn q4_1_group(isa: Isa, d: &[[f32; LANES]], m: &[[f32; LANES]], qs: &[[u8; 128]], tile: Tile<'_>) -> [[f32; LANES]; 4] {
    dispatch!(isa, tile, q4_1, q4_1_portable, (d, m, qs))
}

/// Two Q4_1 groups against one tile, sharing each activation broadcast (AVX-512 VNNI); two
/// single-group calls elsewhere.
type Q4_1Group<'a> = (&'a [[f32; LANES]], &'a [[f32; LANES]], &'a [[u8; 128]]);

fn q4_1_pair(isa: Isa, w: [Q4_1Group<'_>; 2], tile: Tile<'_>) -> [[[f32; LANES]; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: `Isa::detect` and `Isa::available` name AVX-512 VNNI only where the CPU has it.
        fn pad2<const N: usize>([a, b]: [[[f32; LANES]; N]; 2]) -> [[[f32; LANES]; 4]; 2] {
            [pad(a), pad(b)]
        }
        use x86::avx512vnni::q4_1_groups;
        return match tile {
            Tile::One(x) => pad2(unsafe { q4_1_groups::<2, 1>(w, x) }),
            Tile::Two(x) => pad2(unsafe { q4_1_groups::<2, 2>(w, x) }),
            Tile::Three(x) => pad2(unsafe { q4_1_groups::<2, 3>(w, x) }),
            Tile::Four(x) => unsafe { q4_1_groups::<2, 4>(w, x) },
        };
    }
    w.map(|(d, m, qs)| q4_1_group(isa, d, m, qs, tile))
}

fn q8_0_group(
    isa: Isa,
    d: &[[f32; LANES]],
    off: &[[i32; LANES]],
    qs: &[[i8; 256]],
    tile: Tile<'_>,
) -> [[f32; LANES]; 4] {
    dispatch!(isa, tile, q8_0, q8_0_portable, (d, off, qs))
}

/// The Q4_1 kernel as a plain loop: the same integer sums as the x86 kernels.
fn q4_1_portable(d: &[[f32; LANES]], m: &[[f32; LANES]], qs: &[[u8; 128]], x: &[Q8Block]) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    for (b, xb) in x.iter().enumerate() {
        for (r, a) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for c in 0..4 {
                for j in 0..4 {
                    let byte = qs[b][32 * c + 4 * r + j];
                    isum += i32::from(byte & 15) * i32::from(xb.q[4 * c + j])
                        + i32::from(byte >> 4) * i32::from(xb.q[16 + 4 * c + j]);
                }
            }
            *a += isum as f32 * (d[b][r] * xb.d) + m[b][r] * xb.s;
        }
    }
    acc
}

/// The Q5_0 kernel as a plain loop: the 5-bit values (nibble and fifth bit) offset by 16.
fn q5_0_portable(d: &[[f32; LANES]], qs: &[[u8; 128]], qh: &[[u8; 32]], x: &[Q8Block]) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    for (b, xb) in x.iter().enumerate() {
        for (r, a) in acc.iter_mut().enumerate() {
            let mut isum = -16 * (xb.h[0] + xb.h[1]);
            for e in 0..QK {
                let nibble = qs[b][32 * (e % 16 / 4) + 4 * r + e % 4] >> (4 * (e / 16)) & 15;
                let q = nibble | ((qh[b][4 * r + e % 4] >> (e / 4)) & 1) << 4;
                isum += i32::from(q) * i32::from(xb.q[e]);
            }
            *a += isum as f32 * (d[b][r] * xb.d);
        }
    }
    acc
}

/// The Q8_0 kernel as a plain loop.
fn q8_0_portable(d: &[[f32; LANES]], _offset: &[[i32; LANES]], qs: &[[i8; 256]], x: &[Q8Block]) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    for (b, xb) in x.iter().enumerate() {
        for (r, a) in acc.iter_mut().enumerate() {
            let isum: i32 = (0..QK).map(|e| i32::from(qs[b][32 * (e / 4) + 4 * r + e % 4]) * i32::from(xb.q[e])).sum();
            *a += isum as f32 * (d[b][r] * xb.d);
        }
    }
    acc
}

fn dot_f32(isa: Isa, w: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        #[target_feature(enable = "avx2,fma")]
        fn fast(w: &[f32], x: &[f32]) -> f32 {
            dot_f32_portable(w, x)
        }
        // SAFETY: every Isa but Portable implies AVX2 and FMA.
        return unsafe { fast(w, x) };
    }
    let _ = isa;
    dot_f32_portable(w, x)
}

#[inline(always)]
fn dot_f32_portable(w: &[f32], x: &[f32]) -> f32 {
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
mod tests;
