//! Quantized weights regrouped eight rows at a time, so that one 256-bit vector holds the same
//! four columns of eight rows and an integer dot-product instruction yields eight rows' partial
//! sums side by side (no horizontal sums); and the activations quantized to 8 bits per block.

use crate::cpu::threads::for_each_chunk_mut;
use crate::model::quant::f16 as half;

/// Values per quantization block.
pub const QK: usize = 32;
/// Rows per interleaved group (the lanes of a 256-bit vector of i32/f32).
pub const LANES: usize = 8;

/// Q4_1 weights (`w = d·q + m`, `q` in 0..16). Entry `g·nb + b` holds block `b` of the eight rows
/// of group `g`: their scales and minimums, and four 32-byte chunks where chunk `c` has, for row
/// `r` at bytes `4r..4r+4`, bytes `4c..4c+4` of that row's GGUF block. Those bytes carry values
/// `4c..4c+4` in their low nibbles and `16+4c..16+4c+4` in their high ones.
#[derive(Debug, Default)]
pub struct Q4_1Rows {
    pub d: Vec<[f32; LANES]>,
    pub m: Vec<[f32; LANES]>,
    pub qs: Vec<[u8; 4 * 32]>,
}

/// Q8_0 weights (`w = d·q`, `q` signed). Entry `g·nb + b`: scales, eight 32-byte chunks where
/// chunk `c` has row `r`'s values `4c..4c+4` at bytes `4r..4r+4`, and `128·Σq` per row (the
/// correction for kernels that take the activations offset by 128 to make them unsigned).
#[derive(Debug, Default)]
pub struct Q8_0Rows {
    pub d: Vec<[f32; LANES]>,
    pub offset: Vec<[i32; LANES]>,
    pub qs: Vec<[i8; 8 * 32]>,
}

/// Decode row `r` of a matrix whose entry `g·nb + b` holds block `b` of the eight rows of group
/// `g`: `value(i, lane, e)` is value `e` of entry `i` in row `lane` of its group.
fn decode_row(r: usize, out: &mut [f32], value: impl Fn(usize, usize, usize) -> f32) {
    let nb = out.len() / QK;
    let (g, lane) = (r / LANES, r % LANES);
    for b in 0..nb {
        for (e, o) in out[b * QK..(b + 1) * QK].iter_mut().enumerate() {
            *o = value(g * nb + b, lane, e);
        }
    }
}

/// Q5_0 weights (`w = d·(q − 16)`, `q` in 0..32). Entry `g·nb + b`: scales, `qs` laid out as
/// `Q4_1Rows::qs` (the low four bits), and `qh`, whose byte `4r + t` holds in bit `c` the fifth bit
/// of row `r`'s value `4c + t` (chunk `c`'s value `t`, chunks counted as Q8_0's are).
#[derive(Debug, Default)]
pub struct Q5_0Rows {
    pub d: Vec<[f32; LANES]>,
    pub qs: Vec<[u8; 4 * 32]>,
    pub qh: Vec<[u8; 32]>,
}

impl Q5_0Rows {
    /// From GGUF bytes (22 per block: `d`, 32 fifth bits, 16 bytes of nibbles); `rows` is a
    /// multiple of 8.
    pub fn from_ggml(bytes: &[u8], rows: usize, cols: usize) -> Self {
        let nb = cols / QK;
        let mut out = Self::default();
        for g in 0..rows / LANES {
            for b in 0..nb {
                let (mut d, mut qs, mut qh) = ([0.0; LANES], [0u8; 128], [0u8; 32]);
                for r in 0..LANES {
                    let blk = &bytes[((g * LANES + r) * nb + b) * 22..][..22];
                    d[r] = half(&blk[0..2]);
                    let fifth = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    for c in 0..4 {
                        qs[32 * c + 4 * r..32 * c + 4 * r + 4].copy_from_slice(&blk[6 + 4 * c..10 + 4 * c]);
                    }
                    for t in 0..4 {
                        qh[4 * r + t] = (0..8).map(|c| (((fifth >> (4 * c + t)) & 1) as u8) << c).sum();
                    }
                }
                out.d.push(d);
                out.qs.push(qs);
                out.qh.push(qh);
            }
        }
        out
    }

    /// Row `lane`'s 5-bit value `e` (0..32) in entry `i`.
    pub fn value(&self, i: usize, lane: usize, e: usize) -> u8 {
        let (c, t) = (e % 16 / 4, e % 4);
        let nibble = self.qs[i][32 * c + 4 * lane + t] >> (4 * (e / 16)) & 15;
        nibble | ((self.qh[i][4 * lane + t] >> (e / 4)) & 1) << 4
    }

    pub fn row(&self, r: usize, out: &mut [f32]) {
        decode_row(r, out, |i, lane, e| (f32::from(self.value(i, lane, e)) - 16.0) * self.d[i][lane]);
    }

    pub fn append(&mut self, other: Self) {
        self.d.extend(other.d);
        self.qs.extend(other.qs);
        self.qh.extend(other.qh);
    }
}

impl Q4_1Rows {
    /// From GGUF bytes (20 per block, rows one after the other); `rows` is a multiple of 8.
    pub fn from_ggml(bytes: &[u8], rows: usize, cols: usize) -> Self {
        let nb = cols / QK;
        let mut out = Self::default();
        for g in 0..rows / LANES {
            for b in 0..nb {
                let (mut d, mut m, mut qs) = ([0.0; LANES], [0.0; LANES], [0u8; 128]);
                for r in 0..LANES {
                    let blk = &bytes[((g * LANES + r) * nb + b) * 20..][..20];
                    (d[r], m[r]) = (half(&blk[0..2]), half(&blk[2..4]));
                    for c in 0..4 {
                        qs[32 * c + 4 * r..32 * c + 4 * r + 4].copy_from_slice(&blk[4 + 4 * c..8 + 4 * c]);
                    }
                }
                out.d.push(d);
                out.m.push(m);
                out.qs.push(qs);
            }
        }
        out
    }

    pub fn row(&self, r: usize, out: &mut [f32]) {
        decode_row(r, out, |i, lane, e| {
            // Values 0..16 are the low nibbles of bytes 0..16, values 16..32 their high ones.
            let byte = self.qs[i][32 * (e % 16 / 4) + 4 * lane + e % 4];
            f32::from(byte >> (4 * (e / 16)) & 15) * self.d[i][lane] + self.m[i][lane]
        });
    }

    pub fn append(&mut self, other: Self) {
        self.d.extend(other.d);
        self.m.extend(other.m);
        self.qs.extend(other.qs);
    }
}

impl Q8_0Rows {
    /// From each row's blocks: `block(row, b)` is block `b` of `row` as (scale, quants).
    fn from_blocks(rows: usize, cols: usize, block: impl Fn(usize, usize) -> (f32, [i8; QK])) -> Self {
        let mut out = Self::default();
        for g in 0..rows / LANES {
            for b in 0..cols / QK {
                let (mut d, mut offset, mut qs) = ([0.0; LANES], [0i32; LANES], [0i8; 256]);
                for r in 0..LANES {
                    let q;
                    (d[r], q) = block(g * LANES + r, b);
                    for (e, &v) in q.iter().enumerate() {
                        qs[32 * (e / 4) + 4 * r + e % 4] = v;
                        offset[r] += 128 * i32::from(v);
                    }
                }
                out.d.push(d);
                out.offset.push(offset);
                out.qs.push(qs);
            }
        }
        out
    }

    /// From GGUF bytes (34 per block); `rows` is a multiple of 8.
    pub fn from_ggml(bytes: &[u8], rows: usize, cols: usize) -> Self {
        let nb = cols / QK;
        Self::from_blocks(rows, cols, |row, b| {
            let blk = &bytes[(row * nb + b) * 34..][..34];
            (half(&blk[0..2]), std::array::from_fn(|e| blk[2 + e] as i8))
        })
    }

    /// Quantize f32 rows (`rows` a multiple of 8): for types without a kernel of their own.
    pub fn from_f32(values: &[f32], rows: usize, cols: usize) -> Self {
        Self::from_blocks(rows, cols, |row, b| {
            let q = Q8Block::quantize(&values[row * cols + b * QK..][..QK]);
            (q.d, q.q)
        })
    }

    pub fn row(&self, r: usize, out: &mut [f32]) {
        decode_row(r, out, |i, lane, e| f32::from(self.qs[i][32 * (e / 4) + 4 * lane + e % 4]) * self.d[i][lane]);
    }

    pub fn append(&mut self, other: Self) {
        self.d.extend(other.d);
        self.offset.extend(other.offset);
        self.qs.extend(other.qs);
    }
}

/// 32 activations as 8-bit integers: `x ≈ d·q`, `s = d·Σq` (for the minimum terms of Q4_1 and
/// Q4_K), `h`, the sums of `q` over each half (for Q6_K's offset of 32 on 16-value sub-blocks),
/// and `u`, the same integers offset by 128 (unsigned, for the kernels that multiply unsigned by
/// signed).
#[derive(Clone, Copy, Debug)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub h: [i32; 2],
    pub q: [i8; QK],
    pub u: [u8; QK],
}

impl Q8Block {
    pub(super) fn quantize(c: &[f32]) -> Self {
        let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let (mut q, mut u) = ([0i8; QK], [0u8; QK]);
        let mut h = [0i32; 2];
        for (e, ((o, ou), &v)) in q.iter_mut().zip(&mut u).zip(c).enumerate() {
            // Round half away from zero without calling libm's `roundf`.
            let r = v * inv;
            *o = (r + 0.5f32.copysign(r)) as i8;
            *ou = (*o as u8) ^ 0x80;
            h[e / 16] += i32::from(*o);
        }
        Self { d, s: d * (h[0] + h[1]) as f32, h, q, u }
    }
}

/// Quantize `n` rows of activations (their length a multiple of 32), block by block, the rows
/// in parallel.
pub fn quantize_rows(x: &[f32], n: usize) -> Vec<Q8Block> {
    if n == 0 {
        return Vec::new();
    }
    let per_row = x.len() / n / QK;
    let mut out = vec![Q8Block { d: 0.0, s: 0.0, h: [0; 2], q: [0; QK], u: [0; QK] }; n * per_row];
    #[cfg(target_arch = "x86_64")]
    let fast = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    for_each_chunk_mut(&mut out, per_row, |t, blocks| {
        for (b, c) in blocks.iter_mut().zip(x[t * per_row * QK..(t + 1) * per_row * QK].chunks_exact(QK)) {
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: the CPU reports AVX2 and FMA.
                *b = unsafe { super::x86::quantize_block(c) };
                continue;
            }
            *b = Q8Block::quantize(c);
        }
    });
    out
}
