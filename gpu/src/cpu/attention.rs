//! Attention over the paged KV cache: each new token attends to every position up to its own,
//! reading K and V straight from the sequence's blocks. Work is split by token and KV head (the
//! query heads that share a KV head go together) over the compute threads.

use super::kernels::softmax;
use super::kv::KvCache;
use super::threads::for_each_chunk_mut;
use crate::pool::BlockId;

/// The shape of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// `out[r]` = attention of `q[r]` (all heads, `heads · head_dim` wide) over positions `0..=pos`
/// of the sequence whose block table and position are `rows[r]`, in layer `layer` of `kv`.
pub fn attend(shape: Heads, layer: usize, kv: &KvCache, q: &[f32], rows: &[(&[BlockId], usize)], out: &mut [f32]) {
    let group = shape.heads / shape.kv_heads;
    let width = group * shape.head_dim;
    #[cfg(target_arch = "x86_64")]
    let fast = std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c");
    for_each_chunk_mut(out, width, |i, out| {
        let (r, kvh) = (i / shape.kv_heads, i % shape.kv_heads);
        let q = &q[i * width..(i + 1) * width];
        let (table, pos) = rows[r];
        let part = Part { shape, layer, kvh, table, len: pos + 1 };
        #[cfg(target_arch = "x86_64")]
        if fast {
            #[target_feature(enable = "avx2,fma,f16c")]
            fn with_fma(part: Part<'_>, kv: &KvCache, q: &[f32], out: &mut [f32]) {
                part.attend::<true>(kv, q, out)
            }
            // SAFETY: the CPU reports AVX2, FMA and F16C.
            return unsafe { with_fma(part, kv, q, out) };
        }
        part.attend::<false>(kv, q, out)
    });
}

/// One token's query heads that share KV head `kvh`.
#[derive(Clone, Copy)]
struct Part<'a> {
    shape: Heads,
    layer: usize,
    kvh: usize,
    table: &'a [BlockId],
    len: usize,
}

/// `a·b + c`, fused where the caller was compiled with FMA (`FUSED`, which also means F16C for
/// reading f16 K and V); plain otherwise, where `mul_add` would be a slow library call.
#[inline(always)]
fn fma<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

impl Part<'_> {
    #[inline(always)]
    fn attend<const FUSED: bool>(&self, kv: &KvCache, q: &[f32], out: &mut [f32]) {
        let hd = self.shape.head_dim;
        let group = q.len() / hd;
        let (len, kvh) = (self.len, self.kvh);
        let (bs, kvw) = (kv.block_size(), kv.kv_width());
        let blocks = &self.table[..len.div_ceil(bs)];
        let scale = 1.0 / (hd as f32).sqrt();
        // scores[g][t], walking the blocks (one table lookup per block).
        let mut scores = vec![0.0f32; group * len];
        let mut buf = vec![0.0f32; hd];
        for (bi, &block) in blocks.iter().enumerate() {
            let (keys, _) = kv.block(self.layer, block);
            for j in 0..bs.min(len - bi * bs) {
                let k = keys.read::<FUSED>(kvw, j, kvh * hd, &mut buf);
                for g in 0..group {
                    scores[g * len + bi * bs + j] = dot::<FUSED>(&q[g * hd..(g + 1) * hd], k) * scale;
                }
            }
        }
        for g in 0..group {
            softmax(&mut scores[g * len..(g + 1) * len]);
        }
        out.fill(0.0);
        for (bi, &block) in blocks.iter().enumerate() {
            let (_, values) = kv.block(self.layer, block);
            for j in 0..bs.min(len - bi * bs) {
                let v = values.read::<FUSED>(kvw, j, kvh * hd, &mut buf);
                for g in 0..group {
                    let s = scores[g * len + bi * bs + j];
                    for (o, &v) in out[g * hd..(g + 1) * hd].iter_mut().zip(v) {
                        *o = fma::<FUSED>(s, v, *o);
                    }
                }
            }
        }
    }
}

/// Dot product with two eight-wide accumulators summed as a tree.
#[inline(always)]
fn dot<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (mut acc0, mut acc1) = ([0.0f32; 8], [0.0f32; 8]);
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc0[j] = fma::<FUSED>(x[j], y[j], acc0[j]);
            acc1[j] = fma::<FUSED>(x[j + 8], y[j + 8], acc1[j]);
        }
    }
    for j in 0..8 {
        acc0[j] += acc1[j];
    }
    let s4 = [acc0[0] + acc0[4], acc0[1] + acc0[5], acc0[2] + acc0[6], acc0[3] + acc0[7]];
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1] + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
}
