//! Attention over the paged KV cache: each new token attends to every position up to its own,
//! reading K and V straight from the sequence's blocks. Tokens run in parallel on the compute threads.

use super::kernels::{dot, softmax};
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
/// of the sequence whose block table is `tables[r]`, in layer `layer` of `kv`.
pub fn attend(shape: Heads, layer: usize, kv: &KvCache, q: &[f32], rows: &[(&[BlockId], usize)], out: &mut [f32]) {
    let width = shape.heads * shape.head_dim;
    for_each_chunk_mut(out, width, |r, out| {
        let (q, (table, pos)) = (&q[r * width..(r + 1) * width], rows[r]);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            #[target_feature(enable = "avx2,fma")]
            fn fast(
                shape: Heads,
                layer: usize,
                kv: &KvCache,
                q: &[f32],
                table: &[BlockId],
                pos: usize,
                out: &mut [f32],
            ) {
                attend_one(shape, layer, kv, q, table, pos, out)
            }
            // SAFETY: the CPU reports AVX2 and FMA.
            return unsafe { fast(shape, layer, kv, q, table, pos, out) };
        }
        attend_one(shape, layer, kv, q, table, pos, out)
    });
}

/// One token, all heads, walking the sequence's blocks: each K and V row is read once for all
/// the heads, and the block table once per block.
#[inline(always)]
fn attend_one(shape: Heads, layer: usize, kv: &KvCache, q: &[f32], table: &[BlockId], pos: usize, out: &mut [f32]) {
    let (hd, heads) = (shape.head_dim, shape.heads);
    let group = heads / shape.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let (bs, kvw) = (kv.block_size(), kv.kv_width());
    let len = pos + 1;
    // scores[head][t]
    let mut scores = vec![0.0f32; heads * len];
    for (bi, &block) in table[..len.div_ceil(bs)].iter().enumerate() {
        let (keys, _) = kv.block(layer, block);
        for (j, krow) in keys.chunks_exact(kvw).take(len - bi * bs).enumerate() {
            for (kvh, k) in krow.chunks_exact(hd).enumerate() {
                for head in kvh * group..(kvh + 1) * group {
                    scores[head * len + bi * bs + j] = dot(&q[head * hd..][..hd], k) * scale;
                }
            }
        }
    }
    for head in 0..heads {
        softmax(&mut scores[head * len..(head + 1) * len]);
    }
    out.fill(0.0);
    for (bi, &block) in table[..len.div_ceil(bs)].iter().enumerate() {
        let (_, values) = kv.block(layer, block);
        for (j, vrow) in values.chunks_exact(kvw).take(len - bi * bs).enumerate() {
            for (kvh, v) in vrow.chunks_exact(hd).enumerate() {
                for head in kvh * group..(kvh + 1) * group {
                    let w = scores[head * len + bi * bs + j];
                    for (o, &v) in out[head * hd..][..hd].iter_mut().zip(v) {
                        *o += w * v;
                    }
                }
            }
        }
    }
}
