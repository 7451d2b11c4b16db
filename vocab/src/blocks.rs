//! Token blocks and their hashes, the same scheme as Dynamo so traces and tools line up: a block's
//! local hash is XXH3-64 (seed 1337) over its token ids as little-endian u32; sequence hashes
//! chain, `seq[0] = local[0]`, `seq[i] = XXH3-64(seed, le(seq[i-1]) ‖ le(local[i]))`. Only full
//! blocks are hashed. A salt (model fingerprint, LoRA, tenant) changes the seed so that different
//! models never share blocks.

use twox_hash::XxHash3_64;

/// The seed of the unsalted scheme.
pub const BLOCK_HASH_SEED: u64 = 1337;

/// Hashes token blocks of a fixed size under one salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHasher {
    block_size: usize,
    seed: u64,
}

impl BlockHasher {
    /// The unsalted scheme (the test vectors' one).
    pub fn new(block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        Self { block_size, seed: BLOCK_HASH_SEED }
    }

    /// A salted scheme: the seed is XXH3-64(1337, le(salt)).
    pub fn salted(block_size: usize, salt: u64) -> Self {
        Self { seed: XxHash3_64::oneshot_with_seed(BLOCK_HASH_SEED, &salt.to_le_bytes()), ..Self::new(block_size) }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// How many leading full blocks of a prompt of `len` tokens can come from a cache (a pool's
    /// prefix cache, another worker, a tier): all but the block of the last token, which is
    /// always computed because its logits give the next token.
    pub fn reusable_blocks(&self, len: usize) -> usize {
        len.saturating_sub(1) / self.block_size
    }

    /// The sequence hashes of `tokens`' reusable blocks (`reusable_blocks`).
    pub fn reusable_hashes(&self, tokens: &[u32]) -> Vec<u64> {
        self.sequence_hashes(&tokens[..self.reusable_blocks(tokens.len()) * self.block_size])
    }

    /// Local hashes of every full block of `tokens`.
    pub fn local_hashes(&self, tokens: &[u32]) -> Vec<u64> {
        tokens.chunks_exact(self.block_size).map(|block| self.local_hash(block)).collect()
    }

    /// The local hash of one block's tokens.
    pub fn local_hash(&self, block: &[u32]) -> u64 {
        let bytes: Vec<u8> = block.iter().flat_map(|t| t.to_le_bytes()).collect();
        XxHash3_64::oneshot_with_seed(self.seed, &bytes)
    }

    /// The sequence hash of a block given its parent's sequence hash (None for the first block).
    pub fn chain(&self, parent: Option<u64>, local: u64) -> u64 {
        match parent {
            None => local,
            Some(p) => {
                let mut buf = [0u8; 16];
                buf[..8].copy_from_slice(&p.to_le_bytes());
                buf[8..].copy_from_slice(&local.to_le_bytes());
                XxHash3_64::oneshot_with_seed(self.seed, &buf)
            }
        }
    }

    /// Sequence hashes of every full block of `tokens`.
    pub fn sequence_hashes(&self, tokens: &[u32]) -> Vec<u64> {
        let mut parent = None;
        self.local_hashes(tokens)
            .into_iter()
            .map(|local| {
                let seq = self.chain(parent, local);
                parent = Some(seq);
                seq
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vectors {
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        block_size: usize,
        tokens: Vec<u32>,
        local_hashes: Vec<u64>,
        sequence_hashes: Vec<u64>,
    }

    /// The shared vectors, copied from `../shared/block_hash_vectors.json`.
    const VECTORS: &str = include_str!("../tests/block_hash_vectors.json");

    #[test]
    fn the_last_token_is_never_reusable() {
        let h = BlockHasher::new(4);
        assert_eq!([0, 1, 4, 5, 8, 9].map(|n| h.reusable_blocks(n)), [0, 0, 0, 1, 1, 2]);
        let tokens: Vec<u32> = (0..9).collect();
        assert_eq!(h.reusable_hashes(&tokens), h.sequence_hashes(&tokens[..8]));
        assert_eq!(h.reusable_hashes(&tokens[..8]), h.sequence_hashes(&tokens[..4]));
    }

    #[test]
    fn matches_the_shared_test_vectors() {
        let v: Vectors = serde_json::from_str(VECTORS).unwrap();
        assert_eq!(v.cases.len(), 4);
        for case in v.cases {
            let h = BlockHasher::new(case.block_size);
            assert_eq!(h.local_hashes(&case.tokens), case.local_hashes, "{}", case.name);
            assert_eq!(h.sequence_hashes(&case.tokens), case.sequence_hashes, "{}", case.name);
        }
    }

    #[test]
    fn salt_separates_models_and_prefixes_share() {
        let tokens: Vec<u32> = (0..64).collect();
        let plain = BlockHasher::new(16);
        let a = BlockHasher::salted(16, 1);
        let b = BlockHasher::salted(16, 2);
        assert_ne!(a.sequence_hashes(&tokens), b.sequence_hashes(&tokens));
        assert_ne!(a.sequence_hashes(&tokens), plain.sequence_hashes(&tokens));
        // A shared prefix gives shared leading hashes; the divergent block and all after differ.
        let mut other = tokens.clone();
        other[40] = 999;
        let (x, y) = (a.sequence_hashes(&tokens), a.sequence_hashes(&other));
        assert_eq!(x[..2], y[..2]);
        assert_ne!(x[2], y[2]);
        assert_ne!(x[3], y[3]);
    }
}
