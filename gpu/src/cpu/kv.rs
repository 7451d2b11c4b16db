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

    /// `src[i]` to `at + i · stride`.
    fn write_strided(&mut self, at: usize, stride: usize, src: &[f32]) {
        match self {
            Store::F16(v) => src.iter().enumerate().for_each(|(i, &x)| v[at + i * stride] = f16::from_f32(x)),
            Store::F32(v) => src.iter().enumerate().for_each(|(i, &x)| v[at + i * stride] = x),
        }
    }

    fn slab(&self, at: usize, len: usize) -> Slab<'_> {
        match self {
            Store::F16(v) => Slab::F16(&v[at..at + len]),
            Store::F32(v) => Slab::F32(&v[at..at + len]),
        }
    }
}

/// Stored values as their little-endian bytes (f16 and f32 are plain bits; this crate only builds
/// the byte view on little-endian targets).
#[cfg(target_endian = "little")]
fn values_as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f16 and f32 have no padding or invalid bit patterns; the view covers exactly `v`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(target_endian = "little")]
fn values_as_bytes_mut<T: Copy>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above; any bytes written form valid f16/f32 values.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Part of one block of one layer, as stored.
#[derive(Clone, Copy)]
pub enum Slab<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl<'a> Slab<'a> {
    /// Ask for `[at, at + len)` to be brought into the cache.
    #[inline(always)]
    pub fn prefetch(&self, at: usize, len: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let (ptr, bytes) = match *self {
                Slab::F16(v) => (v[at..at + len].as_ptr().cast::<i8>(), 2 * len),
                Slab::F32(v) => (v[at..at + len].as_ptr().cast::<i8>(), 4 * len),
            };
            for line in (0..bytes).step_by(64) {
                // SAFETY: a prefetch never faults; the address is inside the slab anyway.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.wrapping_add(line))
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (at, len);
    }

    /// `[at, at + buf.len())` as f32: borrowed when stored as f32, converted into `buf`
    /// otherwise. With `F16C` the caller must have been compiled with (and the CPU must have)
    /// AVX2 and F16C; the conversion is then inlined.
    #[inline(always)]
    pub fn read<'b, const F16C: bool>(&self, at: usize, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
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

/// K and V of every layer and block. Keys are stored transposed within a block,
/// `[layer][block][kv_head][dim][position]`, so that scores for a block's positions are
/// vector products without horizontal sums; values as rows, `[layer][block][position][kv_width]`.
pub struct KvCache {
    keys: Store,
    values: Store,
    blocks: usize,
    block_size: usize,
    kv_width: usize,
    head_dim: usize,
}

impl KvCache {
    /// Allocate the whole cache once.
    pub fn new(
        layers: usize,
        blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: KvDtype,
    ) -> Self {
        let kv_width = kv_heads * head_dim;
        let len = layers * blocks * block_size * kv_width;
        Self { keys: Store::new(dtype, len), values: Store::new(dtype, len), blocks, block_size, kv_width, head_dim }
    }

    /// Bytes of K and V per block, over all layers.
    pub fn bytes_per_block(layers: usize, block_size: usize, kv_width: usize, dtype: KvDtype) -> usize {
        2 * layers * block_size * kv_width * dtype.bytes()
    }

    pub fn write(&mut self, layer: usize, table: &[BlockId], pos: usize, k: &[f32], v: &[f32]) {
        let (bs, kvw) = (self.block_size, self.kv_width);
        let block = table[pos / bs].0 as usize;
        debug_assert!(block < self.blocks);
        let base = (layer * self.blocks + block) * bs * kvw;
        let p = pos % bs;
        self.values.write(base + p * kvw, v);
        // Column `p` of the transposed block: K's element e (head e / head_dim, dimension
        // e % head_dim) goes to row e.
        self.keys.write_strided(base + p, bs, k);
    }

    /// The values of one layer's K (then V) part of `block`: `block_size × kv_width`.
    fn block_range(&self, layer: usize, block: BlockId) -> std::ops::Range<usize> {
        let len = self.block_size * self.kv_width;
        let at = (layer * self.blocks + block.0 as usize) * len;
        at..at + len
    }

    /// Blocks in the cache.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Layers in the cache.
    pub fn layers(&self) -> usize {
        let len = match &self.keys {
            Store::F16(v) => v.len(),
            Store::F32(v) => v.len(),
        };
        len / (self.blocks * self.block_size * self.kv_width)
    }

    pub fn dtype(&self) -> KvDtype {
        match self.keys {
            Store::F16(_) => KvDtype::F16,
            Store::F32(_) => KvDtype::F32,
        }
    }

    /// Bytes of one block over all layers: per layer, K (as stored, transposed) then V.
    pub fn block_bytes(&self) -> usize {
        Self::bytes_per_block(self.layers(), self.block_size, self.kv_width, self.dtype())
    }

    /// Copy `block` out (little-endian values, `block_bytes()` bytes).
    pub fn read_block(&self, block: BlockId, out: &mut [u8]) {
        assert_eq!(out.len(), self.block_bytes(), "block buffer size");
        let mut chunks = out.chunks_exact_mut(self.block_size * self.kv_width * self.dtype().bytes());
        for layer in 0..self.layers() {
            let r = self.block_range(layer, block);
            for store in [&self.keys, &self.values] {
                let dst = chunks.next().expect("sized above");
                match store {
                    Store::F16(v) => dst.copy_from_slice(values_as_bytes(&v[r.clone()])),
                    Store::F32(v) => dst.copy_from_slice(values_as_bytes(&v[r.clone()])),
                }
            }
        }
    }

    /// Overwrite `block` with bytes `read_block` produced (same layout).
    pub fn write_block(&mut self, block: BlockId, data: &[u8]) {
        assert_eq!(data.len(), self.block_bytes(), "block buffer size");
        let part = self.block_size * self.kv_width * self.dtype().bytes();
        let mut chunks = data.chunks_exact(part);
        for layer in 0..self.layers() {
            let r = self.block_range(layer, block);
            for k in [true, false] {
                let src = chunks.next().expect("sized above");
                let store = if k { &mut self.keys } else { &mut self.values };
                match store {
                    Store::F16(v) => values_as_bytes_mut(&mut v[r.clone()]).copy_from_slice(src),
                    Store::F32(v) => values_as_bytes_mut(&mut v[r.clone()]).copy_from_slice(src),
                }
            }
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Width of one position's K (or V) row: KV heads × head size.
    pub fn kv_width(&self) -> usize {
        self.kv_width
    }

    /// KV head `kv_head`'s keys in `block` of `layer`: `head_dim` rows of `block_size` positions.
    pub fn keys(&self, layer: usize, block: BlockId, kv_head: usize) -> Slab<'_> {
        let (bs, hd) = (self.block_size, self.head_dim);
        let at = (layer * self.blocks + block.0 as usize) * bs * self.kv_width + kv_head * hd * bs;
        self.keys.slab(at, hd * bs)
    }

    /// The values of `block` in `layer`: `block_size` rows of `kv_width`.
    pub fn values(&self, layer: usize, block: BlockId) -> Slab<'_> {
        let len = self.block_size * self.kv_width;
        self.values.slab((layer * self.blocks + block.0 as usize) * len, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_in_either_precision() {
        for dtype in [KvDtype::F16, KvDtype::F32] {
            // 2 layers, 4 blocks of 2 positions, 2 KV heads of 3 dimensions.
            let mut kv = KvCache::new(2, 4, 2, 2, 3, dtype);
            let table = [BlockId(3), BlockId(1)];
            let (k, v) = ([0.5f32, -1.25, 3.0, 4.0, 5.0, 6.0], [1.0f32, 2.0, -0.125, 0.25, 0.5, 0.75]);
            kv.write(1, &table, 3, &k, &v);
            let mut buf = [0.0f32; 6];
            // Position 3 is column 1 of block 1; head 1's dimensions are rows 0..3 of its keys.
            let keys = kv.keys(1, BlockId(1), 1).read::<false>(0, &mut buf);
            assert_eq!(keys, [0.0, 4.0, 0.0, 5.0, 0.0, 6.0]);
            assert_eq!(kv.values(1, BlockId(1)).read::<false>(6, &mut buf), v);
            // Other layers and blocks are untouched.
            assert_eq!(kv.values(0, BlockId(1)).read::<false>(6, &mut buf), [0.0; 6]);
            assert_eq!(kv.keys(1, BlockId(3), 1).read::<false>(0, &mut buf), [0.0; 6]);
            assert_eq!(KvCache::bytes_per_block(2, 2, 6, dtype), 2 * 2 * 2 * 6 * dtype.bytes());
        }
    }

    #[test]
    fn a_block_exported_and_imported_elsewhere_reads_back_the_same() {
        for dtype in [KvDtype::F16, KvDtype::F32] {
            let (mut a, mut b) = (KvCache::new(2, 4, 2, 2, 3, dtype), KvCache::new(2, 4, 2, 2, 3, dtype));
            assert_eq!((a.layers(), a.blocks(), a.block_bytes()), (2, 4, 2 * 2 * 2 * 6 * dtype.bytes()));
            let table = [BlockId(2)];
            for layer in 0..2 {
                for pos in 0..2 {
                    let k: Vec<f32> = (0..6).map(|i| (layer * 100 + pos * 10 + i) as f32 * 0.5).collect();
                    let v: Vec<f32> = k.iter().map(|x| -x).collect();
                    a.write(layer, &table, pos, &k, &v);
                }
            }
            let mut bytes = vec![0u8; a.block_bytes()];
            a.read_block(BlockId(2), &mut bytes);
            b.write_block(BlockId(0), &bytes);
            let (mut x, mut y) = ([0.0f32; 12], [0.0f32; 12]);
            for layer in 0..2 {
                for head in 0..2 {
                    let (ka, kb) = (a.keys(layer, BlockId(2), head), b.keys(layer, BlockId(0), head));
                    assert_eq!(ka.read::<false>(0, &mut x[..6]), kb.read::<false>(0, &mut y[..6]));
                }
                let (va, vb) = (a.values(layer, BlockId(2)), b.values(layer, BlockId(0)));
                let got = vb.read::<false>(0, &mut y);
                assert_eq!(va.read::<false>(0, &mut x), got);
                assert!(got.iter().any(|&v| v != 0.0));
            }
        }
    }
}
