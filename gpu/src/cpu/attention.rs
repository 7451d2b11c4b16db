//! Attention over the paged KV cache: each new token attends to every position up to its own (or,
//! in a windowed layer, to the last `window` of them), reading K and V straight from the
//! sequence's blocks; blocks wholly before every row's window are not read. Work is split by KV head (the query heads
//! that share one go together) and by tiles of up to `TILE` consecutive tokens of one sequence
//! (prefill), which share each K and V row they read, over the compute threads.

use super::kernels::softmax;
use super::kv::KvCache;
use super::threads::{SharedMut, for_each_task};
use crate::pool::BlockId;

/// The shape of one layer's attention, and how its scores are formed.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// What q·k is multiplied by.
    pub scale: f32,
    /// Scores become `cap · tanh(score / cap)` (Gemma 2).
    pub softcap: Option<f32>,
    /// Positions a query sees, itself included; None: all before it.
    pub window: Option<usize>,
}

/// Most consecutive tokens of one sequence that share a pass over its K and V.
const TILE: usize = 16;

/// `out[r]` = attention of `q[r]` (all heads, `heads · head_dim` wide) over positions `0..=pos`
/// of the sequence whose block table and position are `rows[r]`, in layer `layer` of `kv`.
pub fn attend(shape: Heads, layer: usize, kv: &KvCache, q: &[f32], rows: &[(&[BlockId], usize)], out: &mut [f32]) {
    let (hd, kv_heads) = (shape.head_dim, shape.kv_heads);
    let width = shape.heads * hd;
    let part_width = width / kv_heads;
    // Tiles: runs of rows of one sequence at consecutive positions (a prefill chunk).
    let mut tiles: Vec<(usize, usize)> = Vec::new();
    for (r, &(table, pos)) in rows.iter().enumerate() {
        match tiles.last_mut() {
            Some((first, n))
                if *n < TILE && std::ptr::eq(rows[*first].0, table) && rows[*first + *n - 1].1 + 1 == pos =>
            {
                *n += 1
            }
            _ => tiles.push((r, 1)),
        }
    }
    #[cfg(target_arch = "x86_64")]
    let fast = std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c");
    let out = SharedMut::new(out);
    for_each_task(tiles.len() * kv_heads, &|i| {
        let ((first, n), kvh) = (tiles[i / kv_heads], i % kv_heads);
        let (table, pos) = rows[first];
        let part = Part { shape, layer, kvh, table, first_pos: pos, rows: n };
        let at = |r: usize| (first + r) * width + kvh * part_width;
        let q: Vec<&[f32]> = (0..n).map(|r| &q[at(r)..at(r) + part_width]).collect();
        // SAFETY: task (tile, kvh) alone writes these rows' parts for KV head `kvh`; tiles do not
        // share rows.
        let mut outs: Vec<&mut [f32]> = (0..n).map(|r| unsafe { out.slice(at(r), part_width) }).collect();
        #[cfg(target_arch = "x86_64")]
        if fast {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn with_fma(part: Part<'_>, kv: &KvCache, q: &[&[f32]], out: &mut [&mut [f32]]) {
                part.attend::<true>(kv, q, out)
            }
            // SAFETY: the CPU reports AVX2, FMA and F16C.
            return unsafe { with_fma(part, kv, &q, &mut outs) };
        }
        part.attend::<false>(kv, &q, &mut outs)
    });
}

/// The query heads that share KV head `kvh`, for `rows` consecutive tokens of one sequence from
/// position `first_pos`.
#[derive(Clone, Copy)]
struct Part<'a> {
    shape: Heads,
    layer: usize,
    kvh: usize,
    table: &'a [BlockId],
    first_pos: usize,
    rows: usize,
}

/// `a·b + c`, fused where the caller was compiled with FMA (`FUSED`, which also means F16C for
/// reading f16 K and V); plain otherwise, where `mul_add` would be a slow library call.
#[inline(always)]
fn fma<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

impl Part<'_> {
    #[inline(always)]
    fn attend<const FUSED: bool>(&self, kv: &KvCache, q: &[&[f32]], out: &mut [&mut [f32]]) {
        let hd = self.shape.head_dim;
        let group = q[0].len() / hd;
        let kvh = self.kvh;
        // Row i sees positions 0..=first_pos + i; the last row sees them all.
        let len = self.first_pos + self.rows;
        let (bs, kvw) = (kv.block_size(), kv.kv_width());
        // Row i sees positions lo(i)..first_pos + i + 1: with a window, the blocks before the
        // first row's window are skipped.
        let window = self.shape.window.unwrap_or(usize::MAX);
        let lo = |i: usize| (self.first_pos + i + 1).saturating_sub(window);
        let first_block = lo(0) / bs;
        let blocks = &self.table[..len.div_ceil(bs)];
        let scale = self.shape.scale;
        // Ask for every K and V row up front: they are short and spread over blocks, and waiting
        // for each in turn (not bandwidth) is what bounds attention.
        for (bi, &block) in blocks.iter().enumerate().skip(first_block) {
            kv.keys(self.layer, block, kvh).prefetch(0, hd * bs);
            let values = kv.values(self.layer, block);
            for j in 0..bs.min(len - bi * bs) {
                values.prefetch(j * kvw + kvh * hd, hd);
            }
        }
        // scores[i][g][t] for row i, head g of the group, position t: a block at a time, from
        // the block's transposed keys.
        let stride = group * len;
        let mut scores = vec![0.0f32; self.rows * stride];
        let mut buf = vec![0.0f32; hd * bs];
        for (bi, &block) in blocks.iter().enumerate().skip(first_block) {
            let t0 = bi * bs;
            let n = bs.min(len - t0);
            let keys = kv.keys(self.layer, block, kvh).read::<FUSED>(0, &mut buf);
            // Rows before the block's first position see none of it.
            for i in t0.saturating_sub(self.first_pos)..self.rows {
                if lo(i) >= t0 + n {
                    continue;
                }
                for g in 0..group {
                    let dst = &mut scores[i * stride + g * len + t0..][..n];
                    block_scores::<FUSED>(&q[i][g * hd..(g + 1) * hd], keys, bs, scale, dst);
                }
            }
        }
        for i in 0..self.rows {
            let seen = self.first_pos + i + 1;
            for g in 0..group {
                let row = &mut scores[i * stride + g * len..][lo(i)..seen];
                if let Some(cap) = self.shape.softcap {
                    row.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
                }
                softmax(row);
            }
            out[i].fill(0.0);
        }
        for (bi, &block) in blocks.iter().enumerate().skip(first_block) {
            let values = kv.values(self.layer, block);
            for j in 0..bs.min(len - bi * bs) {
                let t = bi * bs + j;
                let v = values.read::<FUSED>(j * kvw + kvh * hd, &mut buf[..hd]);
                // The rows that see position t: from the one at t, to the last whose window holds it.
                let last = (t + window.min(len)).saturating_sub(self.first_pos).min(self.rows);
                for i in t.saturating_sub(self.first_pos)..last {
                    for g in 0..group {
                        let s = scores[i * stride + g * len + t];
                        for (o, &v) in out[i][g * hd..(g + 1) * hd].iter_mut().zip(v) {
                            *o = fma::<FUSED>(s, v, *o);
                        }
                    }
                }
            }
        }
    }
}

/// `out[p] = scale · Σ_d q[d] · keys[d][p]` for the first `out.len()` positions of a block whose
/// keys are stored transposed (`head_dim` rows of `bs`). The 16-position case keeps its sums in
/// registers, four independent chains of them.
#[inline(always)]
fn block_scores<const FUSED: bool>(q: &[f32], keys: &[f32], bs: usize, scale: f32, out: &mut [f32]) {
    const B: usize = 16;
    if bs == B {
        let mut acc = [[0.0f32; B]; 4];
        let chunks = q.len() / 4;
        for c in 0..chunks {
            for (u, acc) in acc.iter_mut().enumerate() {
                let d = 4 * c + u;
                let (qd, row) = (q[d], &keys[d * B..(d + 1) * B]);
                for p in 0..B {
                    acc[p] = fma::<FUSED>(qd, row[p], acc[p]);
                }
            }
        }
        for d in 4 * chunks..q.len() {
            let (qd, row) = (q[d], &keys[d * B..(d + 1) * B]);
            for p in 0..B {
                acc[0][p] = fma::<FUSED>(qd, row[p], acc[0][p]);
            }
        }
        for (p, o) in out.iter_mut().enumerate() {
            *o = ((acc[0][p] + acc[1][p]) + (acc[2][p] + acc[3][p])) * scale;
        }
        return;
    }
    out.fill(0.0);
    for (d, &qd) in q.iter().enumerate() {
        for (o, &k) in out.iter_mut().zip(&keys[d * bs..(d + 1) * bs]) {
            *o = fma::<FUSED>(qd, k, *o);
        }
    }
    out.iter_mut().for_each(|o| *o *= scale);
}
