//! The paged KV cache in host memory: one allocation, carved into blocks of `block_size`
//! positions, per layer, for K and V. A sequence's block table maps its positions to blocks.
//! Values are stored as f16 (as llama.cpp does by default: half the memory, so twice the blocks
//! per byte budget and half the memory traffic in attention) or as f32 for exact checks.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::matrix::Precision;
use crate::pool::BlockId;

/// How K and V values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F16,
    F32,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

impl From<Precision> for KvDtype {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fast => KvDtype::F16,
            Precision::Exact => KvDtype::F32,
        }
    }
}

/// `[layer][block][position][kv_width]` values.
enum Store {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Store {
    fn new(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F16 => Store::F16(vec![f16::ZERO; len]),
            KvDtype::F32 => Store::F32(vec![0.0; len]),
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Store::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
            Store::F32(v) => v[at..at + src.len()].copy_from_slice(src),
        }
    }

    fn slab(&self, at: usize, len: usize) -> Slab<'_> {
        match self {
            Store::F16(v) => Slab::F16(&v[at..at + len]),
            Store::F32(v) => Slab::F32(&v[at..at + len]),
        }
    }
}

/// One block's K (or V) rows in one layer, as stored: `block_size` rows of `kv_width`.
#[derive(Clone, Copy)]
pub enum Slab<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl<'a> Slab<'a> {
    /// `row[start..start + buf.len()]` of row `j` as f32: borrowed when stored as f32, converted
    /// into `buf` otherwise. With `F16C` the caller must have been compiled with (and the CPU
    /// must have) AVX2 and F16C; the conversion is then inlined.
    #[inline(always)]
    pub fn read<'b, const F16C: bool>(&self, kv_width: usize, j: usize, start: usize, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        let at = j * kv_width + start;
        match *self {
            Slab::F32(v) => &v[at..at + buf.len()],
            Slab::F16(v) => {
                let src = &v[at..at + buf.len()];
                #[cfg(target_arch = "x86_64")]
                if F16C {
                    use std::arch::x86_64::{_mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
                    let (sc, bc) = (src.chunks_exact(8), buf.chunks_exact_mut(8));
                    let (sr, br) = (sc.remainder(), bc.into_remainder());
                    br.iter_mut().zip(sr).for_each(|(o, h)| *o = h.to_f32());
                    let bc = buf.chunks_exact_mut(8);
                    for (s, b) in src.chunks_exact(8).zip(bc) {
                        // SAFETY: 8 halves in, 8 floats out (unaligned); the caller guarantees
                        // F16C (see above).
                        unsafe {
                            _mm256_storeu_ps(b.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast())))
                        };
                    }
                    return buf;
                }
                src.convert_to_f32_slice(buf);
                buf
            }
        }
    }
}

pub struct KvCache {
    keys: Store,
    values: Store,
    blocks: usize,
    block_size: usize,
    kv_width: usize,
}

impl KvCache {
    /// Allocate (and touch) the whole cache once.
    pub fn new(layers: usize, blocks: usize, block_size: usize, kv_width: usize, dtype: KvDtype) -> Self {
        let len = layers * blocks * block_size * kv_width;
        Self { keys: Store::new(dtype, len), values: Store::new(dtype, len), blocks, block_size, kv_width }
    }

    /// Bytes of K and V per block, over all layers.
    pub fn bytes_per_block(layers: usize, block_size: usize, kv_width: usize, dtype: KvDtype) -> usize {
        2 * layers * block_size * kv_width * dtype.bytes()
    }

    pub fn write(&mut self, layer: usize, table: &[BlockId], pos: usize, k: &[f32], v: &[f32]) {
        let block = table[pos / self.block_size].0 as usize;
        debug_assert!(block < self.blocks);
        let at = ((layer * self.blocks + block) * self.block_size + pos % self.block_size) * self.kv_width;
        self.keys.write(at, k);
        self.values.write(at, v);
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Width of one position's K (or V) row: KV heads × head size.
    pub fn kv_width(&self) -> usize {
        self.kv_width
    }

    /// Block `block`'s keys and values in `layer`.
    pub fn block(&self, layer: usize, block: BlockId) -> (Slab<'_>, Slab<'_>) {
        let len = self.block_size * self.kv_width;
        let at = (layer * self.blocks + block.0 as usize) * len;
        (self.keys.slab(at, len), self.values.slab(at, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_in_either_precision() {
        for dtype in [KvDtype::F16, KvDtype::F32] {
            let mut kv = KvCache::new(2, 4, 2, 3, dtype);
            let table = [BlockId(3), BlockId(1)];
            let (k, v) = ([0.5f32, -1.25, 3.0], [1.0f32, 2.0, -0.125]);
            kv.write(1, &table, 2, &k, &v);
            let (ks, vs) = kv.block(1, BlockId(1));
            let mut buf = [0.0f32; 2];
            assert_eq!(ks.read::<false>(3, 0, 1, &mut buf), &k[1..]);
            assert_eq!(vs.read::<false>(3, 0, 0, &mut buf), &v[..2]);
            // Other layers and blocks are untouched.
            assert_eq!(kv.block(0, BlockId(1)).0.read::<false>(3, 0, 0, &mut buf), &[0.0, 0.0]);
            assert_eq!(KvCache::bytes_per_block(2, 2, 3, dtype), 2 * 2 * 2 * 3 * dtype.bytes());
        }
    }
}
