//! The paged KV cache in host memory: one allocation, carved into blocks of `block_size`
//! positions, per layer, for K and V. A sequence's block table maps its positions to blocks.

use crate::pool::BlockId;

pub struct KvCache {
    /// `[layer][block][position][kv_width]`, K then V halves.
    keys: Vec<f32>,
    values: Vec<f32>,
    blocks: usize,
    block_size: usize,
    kv_width: usize,
}

impl KvCache {
    /// Allocate (and touch) the whole cache once.
    pub fn new(layers: usize, blocks: usize, block_size: usize, kv_heads: usize, head_dim: usize) -> Self {
        let kv_width = kv_heads * head_dim;
        let len = layers * blocks * block_size * kv_width;
        Self { keys: vec![0.0; len], values: vec![0.0; len], blocks, block_size, kv_width }
    }

    /// Bytes of K and V per block, over all layers.
    pub fn bytes_per_block(layers: usize, block_size: usize, kv_heads: usize, head_dim: usize) -> usize {
        2 * layers * block_size * kv_heads * head_dim * std::mem::size_of::<f32>()
    }

    fn offset(&self, layer: usize, table: &[BlockId], pos: usize) -> usize {
        let block = table[pos / self.block_size].0 as usize;
        debug_assert!(block < self.blocks);
        ((layer * self.blocks + block) * self.block_size + pos % self.block_size) * self.kv_width
    }

    pub fn write(&mut self, layer: usize, table: &[BlockId], pos: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(layer, table, pos);
        self.keys[o..o + self.kv_width].copy_from_slice(k);
        self.values[o..o + self.kv_width].copy_from_slice(v);
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Width of one position's K (or V) row: KV heads × head size.
    pub fn kv_width(&self) -> usize {
        self.kv_width
    }

    /// Block `block`'s keys and values in `layer`: `block_size` rows of `kv_width` each.
    pub fn block(&self, layer: usize, block: BlockId) -> (&[f32], &[f32]) {
        let len = self.block_size * self.kv_width;
        let o = (layer * self.blocks + block.0 as usize) * len;
        (&self.keys[o..o + len], &self.values[o..o + len])
    }
}
