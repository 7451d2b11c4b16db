//! The k-quants Q4_K and Q6_K kept at their own width: each 256-value super-block of eight rows
//! regrouped as `layout` does for Q4_1 and Q8_0, so the same integer dot-product instructions
//! give eight rows' sums side by side. The small per-group scales stay integers and are turned
//! into floats in the kernel, which keeps the memory per weight close to the file's (4.75 and
//! 6.625 bits against GGUF's 4.5 and 6.5625, where the 8-bit form they used to be requantized to
//! takes 10). The portable loops here compute the same integer sums as the x86 kernels.

use super::layout::{LANES, Q8Block, QK};
use crate::model::quant::{f16, k4_scale_min_bits};

/// Values per k-quant super-block.
pub const QK_K: usize = 256;
/// 32-value blocks per super-block.
const BLOCKS: usize = QK_K / QK;

/// Eight rows of one Q4_K super-block: `w = d·sc·q − dmin·m` with 4-bit `q` and 6-bit `sc`, `m`
/// per 32-value block `j`. `qs[j]` is laid out as `Q4_1Rows::qs`: chunk `c` holds row `r`'s
/// values `4c..4c+4` (low nibbles) and `16+4c..16+4c+4` (high nibbles) at bytes `32c+4r..`.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Q4KBlock {
    pub d: [f32; LANES],
    pub dmin: [f32; LANES],
    /// `[j][r]`: block `j`'s scale in row `r`.
    pub sc: [[u8; LANES]; BLOCKS],
    /// `[j][r]`: block `j`'s minimum in row `r`.
    pub m: [[u8; LANES]; BLOCKS],
    pub qs: [[u8; 128]; BLOCKS],
}

/// Eight rows of one Q6_K super-block: `w = d·sc·(q − 32)` with 6-bit `q` and a signed 8-bit
/// `sc` per 16 values. For 32-value block `j`, whose eight chunks `c` hold row `r`'s values
/// `4c..4c+4` at bytes `4r..4r+4`: `ql[j]` has chunk `c`'s low four bits in the low nibbles of
/// its 32 bytes `32c..` and chunk `c + 4`'s in the high ones; `qh[j]` has the top two bits of
/// chunks `0..4` (bits `2c..2c+2`) in bytes `0..32` and of chunks `4..8` in bytes `32..64`.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Q6KBlock {
    pub d: [f32; LANES],
    /// `[s][r]`: the scale of 16-value sub-block `s` in row `r`.
    pub sc: [[i8; LANES]; 2 * BLOCKS],
    pub ql: [[u8; 128]; BLOCKS],
    pub qh: [[u8; 64]; BLOCKS],
}

/// Rows of a k-quant matrix: entry `g·nsb + s` is super-block `s` of the eight rows of group `g`.
#[derive(Debug)]
pub struct KRows<B> {
    pub blocks: Vec<B>,
}

impl<B> Default for KRows<B> {
    fn default() -> Self {
        Self { blocks: Vec::new() }
    }
}

impl<B> KRows<B> {
    pub fn append(&mut self, other: Self) {
        self.blocks.extend(other.blocks);
    }

    pub fn bytes(&self) -> usize {
        self.blocks.len() * size_of::<B>()
    }

    /// Decode row `r` into `out`, one 32-value block at a time: `block(blk, lane, j, out)` writes
    /// block `j` of super-block `blk`, where the row is lane `lane`.
    fn decode_row(&self, r: usize, out: &mut [f32], block: impl Fn(&B, usize, usize, &mut [f32])) {
        let nsb = out.len() / QK_K;
        let (g, lane) = (r / LANES, r % LANES);
        for (s, o) in out.chunks_exact_mut(QK_K).enumerate() {
            let blk = &self.blocks[g * nsb + s];
            for (j, o) in o.chunks_exact_mut(QK).enumerate() {
                block(blk, lane, j, o);
            }
        }
    }
}

/// Regroup `rows` rows (a multiple of 8) of `size`-byte GGUF super-blocks, `group` building one
/// block of eight rows from their eight super-blocks.
fn regroup<B>(bytes: &[u8], size: usize, rows: usize, cols: usize, group: impl Fn([&[u8]; LANES]) -> B) -> KRows<B> {
    let nsb = cols / QK_K;
    let blocks = (0..rows / LANES)
        .flat_map(|g| (0..nsb).map(move |s| (g, s)))
        .map(|(g, s)| group(std::array::from_fn(|r| &bytes[((g * LANES + r) * nsb + s) * size..][..size])))
        .collect();
    KRows { blocks }
}

/// The 6-bit values of one GGUF Q6_K super-block (210 bytes), in order.
fn q6_k_values(b: &[u8]) -> [u8; QK_K] {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    std::array::from_fn(|i| {
        let (half, k, l) = (i / 128, i % 128 / 32, i % 32);
        let low = ql[64 * half + l + 32 * (k % 2)] >> (4 * (k / 2)) & 0x0f;
        low | ((qh[32 * half + l] >> (2 * k)) & 3) << 4
    })
}

/// The 4-bit values of one GGUF Q4_K super-block (144 bytes), in order.
fn q4_k_values(b: &[u8]) -> [u8; QK_K] {
    std::array::from_fn(|i| (b[16 + 32 * (i / 64) + i % 32] >> (4 * (i % 64 / 32))) & 0x0f)
}

impl KRows<Q4KBlock> {
    /// From GGUF bytes (144 per super-block, rows one after the other); `rows` is a multiple of 8
    /// and `cols` of 256.
    pub fn from_q4_k(bytes: &[u8], rows: usize, cols: usize) -> Self {
        regroup(bytes, 144, rows, cols, |sb| {
            let mut out = Q4KBlock {
                d: [0.0; LANES],
                dmin: [0.0; LANES],
                sc: [[0; LANES]; BLOCKS],
                m: [[0; LANES]; BLOCKS],
                qs: [[0; 128]; BLOCKS],
            };
            for (r, b) in sb.iter().enumerate() {
                (out.d[r], out.dmin[r]) = (f16(&b[0..2]), f16(&b[2..4]));
                let q = q4_k_values(b);
                for j in 0..BLOCKS {
                    (out.sc[j][r], out.m[j][r]) = k4_scale_min_bits(&b[4..16], j);
                    for c in 0..4 {
                        for t in 0..4 {
                            let v = |e: usize| q[QK * j + e];
                            out.qs[j][32 * c + 4 * r + t] = v(4 * c + t) | v(16 + 4 * c + t) << 4;
                        }
                    }
                }
            }
            out
        })
    }

    pub fn row(&self, r: usize, out: &mut [f32]) {
        self.decode_row(r, out, |blk, lane, j, o| {
            let d = blk.d[lane] * f32::from(blk.sc[j][lane]);
            let m = blk.dmin[lane] * f32::from(blk.m[j][lane]);
            for c in 0..4 {
                for t in 0..4 {
                    let byte = blk.qs[j][32 * c + 4 * lane + t];
                    o[4 * c + t] = d * f32::from(byte & 15) - m;
                    o[16 + 4 * c + t] = d * f32::from(byte >> 4) - m;
                }
            }
        });
    }
}

impl KRows<Q6KBlock> {
    /// From GGUF bytes (210 per super-block); `rows` is a multiple of 8 and `cols` of 256.
    pub fn from_q6_k(bytes: &[u8], rows: usize, cols: usize) -> Self {
        regroup(bytes, 210, rows, cols, |sb| {
            let mut out = Q6KBlock {
                d: [0.0; LANES],
                sc: [[0; LANES]; 2 * BLOCKS],
                ql: [[0; 128]; BLOCKS],
                qh: [[0; 64]; BLOCKS],
            };
            for (r, b) in sb.iter().enumerate() {
                out.d[r] = f16(&b[208..210]);
                for (s, sc) in out.sc.iter_mut().enumerate() {
                    sc[r] = b[192 + s] as i8;
                }
                let q = q6_k_values(b);
                for j in 0..BLOCKS {
                    // Value `t` of chunk `c` of this row in block `j`.
                    let v = |c: usize, t: usize| q[QK * j + 4 * c + t];
                    for c in 0..4 {
                        for t in 0..4 {
                            out.ql[j][32 * c + 4 * r + t] = (v(c, t) & 15) | (v(c + 4, t) & 15) << 4;
                            for half in 0..2 {
                                out.qh[j][32 * half + 4 * r + t] |= (v(4 * half + c, t) >> 4) << (2 * c);
                            }
                        }
                    }
                }
            }
            out
        })
    }

    /// Chunk `c`'s 6-bit value `t` of row `lane` in block `j` of `blk`.
    fn value(blk: &Q6KBlock, j: usize, lane: usize, c: usize, t: usize) -> u8 {
        let low = blk.ql[j][32 * (c % 4) + 4 * lane + t] >> (4 * (c / 4)) & 15;
        let high = blk.qh[j][32 * (c / 4) + 4 * lane + t] >> (2 * (c % 4)) & 3;
        low | high << 4
    }

    pub fn row(&self, r: usize, out: &mut [f32]) {
        self.decode_row(r, out, |blk, lane, j, o| {
            for (e, o) in o.iter_mut().enumerate() {
                let q = Self::value(blk, j, lane, e / 4, e % 4);
                let sc = blk.sc[2 * j + e / 16][lane];
                *o = blk.d[lane] * f32::from(sc) * f32::from(q as i8 - 32);
            }
        });
    }
}

/// The Q4_K kernel as a plain loop: `[r] = Σ_j d·sc·dx·Σq·qx − dmin·m·sx`.
pub fn q4_k_portable(w: &[Q4KBlock], x: &[Q8Block]) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    for (blk, xs) in w.iter().zip(x.chunks_exact(BLOCKS)) {
        for (j, xb) in xs.iter().enumerate() {
            for (r, a) in acc.iter_mut().enumerate() {
                let mut isum = 0i32;
                for c in 0..4 {
                    for t in 0..4 {
                        let byte = blk.qs[j][32 * c + 4 * r + t];
                        isum += i32::from(byte & 15) * i32::from(xb.q[4 * c + t])
                            + i32::from(byte >> 4) * i32::from(xb.q[16 + 4 * c + t]);
                    }
                }
                let d = blk.d[r] * f32::from(blk.sc[j][r]);
                let m = blk.dmin[r] * f32::from(blk.m[j][r]);
                *a += isum as f32 * (d * xb.d);
                *a -= m * xb.s;
            }
        }
    }
    acc
}

/// The Q6_K kernel as a plain loop: per 16-value half `h` of each block,
/// `d·sc·dx·(Σq·qx − 32·Σqx)`.
pub fn q6_k_portable(w: &[Q6KBlock], x: &[Q8Block]) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    for (blk, xs) in w.iter().zip(x.chunks_exact(BLOCKS)) {
        for (j, xb) in xs.iter().enumerate() {
            for (r, a) in acc.iter_mut().enumerate() {
                for h in 0..2 {
                    let mut isum = -32 * xb.h[h];
                    for c in 4 * h..4 * h + 4 {
                        for t in 0..4 {
                            let q = KRows::value(blk, j, r, c, t);
                            isum += i32::from(q) * i32::from(xb.q[4 * c + t]);
                        }
                    }
                    *a += isum as f32 * (blk.d[r] * f32::from(blk.sc[2 * j + h][r]) * xb.d);
                }
            }
        }
    }
    acc
}
