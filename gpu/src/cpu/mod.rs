//! The CPU backend: `ModelExecutor` runs a Llama-family model from GGUF with its KV cache paged
//! in host memory, behind the `Executor` seam.

mod attention;
pub mod config;
pub mod kernels;
pub mod kv;
pub mod llama;
pub mod matrix;
pub(crate) mod mlp;
pub mod threads;

use std::path::Path;

use crate::executor::{Executor, ExecutorError, ModelInfo, SequenceView};
use crate::model::ModelError;
use crate::model::gguf::GgufFile;
use kv::KvCache;
use llama::LlamaModel;
pub use matrix::Precision;

pub struct ModelExecutor {
    name: String,
    model: LlamaModel,
    kv: KvCache,
    /// The forward pass runs on the calling thread with these workers spinning beside it.
    pool: threads::ComputePool,
}

fn compute_pool() -> Result<threads::ComputePool, ModelError> {
    threads::ComputePool::new(threads::threads()).map_err(ModelError::Threads)
}

impl ModelExecutor {
    /// Load a GGUF model with a KV cache of `kv_blocks` blocks of `block_size` positions.
    pub fn from_gguf(g: &GgufFile, name: &str, kv_blocks: usize, block_size: usize) -> Result<Self, ModelError> {
        Self::with_precision(g, name, kv_blocks, block_size, Precision::Fast)
    }

    /// As `from_gguf`, choosing how matrix products are computed.
    pub fn with_precision(
        g: &GgufFile,
        name: &str,
        kv_blocks: usize,
        block_size: usize,
        p: Precision,
    ) -> Result<Self, ModelError> {
        let model = LlamaModel::from_gguf(g, p)?;
        let c = &model.config;
        let kv = KvCache::new(c.layers, kv_blocks, block_size, c.kv_heads, c.head_dim, p.into());
        Ok(Self { name: name.to_string(), model, kv, pool: compute_pool()? })
    }

    /// Load a Hugging Face folder (its weights are used as f32).
    pub fn from_hf(dir: &Path, kv_blocks: usize, block_size: usize) -> Result<Self, ModelError> {
        Self::from_hf_model(&crate::model::hf::HfModel::open(dir)?, kv_blocks, block_size)
    }

    pub fn from_hf_model(
        hf: &crate::model::hf::HfModel,
        kv_blocks: usize,
        block_size: usize,
    ) -> Result<Self, ModelError> {
        let model = LlamaModel::load(hf.config.clone(), hf, Precision::Exact)?;
        let c = &model.config;
        let kv = KvCache::new(c.layers, kv_blocks, block_size, c.kv_heads, c.head_dim, Precision::Exact.into());
        let name = hf.dir.file_name().map_or("model".into(), |s| s.to_string_lossy().into_owned());
        Ok(Self { name, model, kv, pool: compute_pool()? })
    }

    /// Bytes of KV cache one block of `block_size` positions takes for a model of `config`.
    pub fn kv_bytes_per_block(config: &llama::LlamaConfig, block_size: usize, p: Precision) -> u64 {
        KvCache::bytes_per_block(config.layers, block_size, config.kv_width(), p.into()) as u64
    }

    /// Bytes the model's weights take in memory (the KV cache aside).
    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// Serve at most `tokens` of context (less than the model's own, to bound the KV cache).
    pub fn limit_context(&mut self, tokens: usize) {
        self.model.limit_context(tokens);
    }

    pub fn config(&self) -> &llama::LlamaConfig {
        &self.model.config
    }

    /// Experts run so far (every layer, every step) in a mixture-of-experts model.
    pub fn expert_passes(&self) -> u64 {
        self.model.expert_passes()
    }
}

impl Executor for ModelExecutor {
    fn info(&self) -> ModelInfo {
        let c = &self.model.config;
        ModelInfo { name: self.name.clone(), vocab_size: c.vocab, context_length: c.context_length as u32 }
    }

    fn forward(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<Option<Vec<f32>>>, ExecutorError> {
        let (model, kv) = (&self.model, &mut self.kv);
        Ok(self.pool.run(|| model.forward(batch, kv)))
    }

    fn with_host_threads(&mut self, work: &mut dyn FnMut()) {
        self.pool.run(work);
    }

    fn block_layout(&self) -> Option<runtime::kv::BlockLayout> {
        Some(runtime::kv::BlockLayout {
            layers: self.kv.layers() as u32,
            block_size: self.kv.block_size() as u32,
            kv_width: self.kv.kv_width() as u32,
            dtype_bytes: self.kv.dtype().bytes() as u32,
        })
    }

    fn model_fingerprint(&self) -> u64 {
        fingerprint(&self.name, &self.model.config)
    }

    fn export_block(&self, block: crate::pool::BlockId, out: &mut [u8]) -> Result<(), ExecutorError> {
        self.check_block(block, out.len())?;
        self.kv.read_block(block, out);
        Ok(())
    }

    fn import_block(&mut self, block: crate::pool::BlockId, data: &[u8]) -> Result<(), ExecutorError> {
        self.check_block(block, data.len())?;
        self.kv.write_block(block, data);
        Ok(())
    }
}

/// Identifies a model's KV: the name and every shape and constant of the architecture, so two
/// workers that load the same file agree, whatever their backend.
pub fn fingerprint(name: &str, config: &llama::LlamaConfig) -> u64 {
    let text = format!("{name}|{config:?}");
    twox_hash::XxHash3_64::oneshot(text.as_bytes())
}

impl ModelExecutor {
    fn check_block(&self, block: crate::pool::BlockId, len: usize) -> Result<(), ExecutorError> {
        let layout = self.block_layout().expect("the CPU backend's blocks move");
        crate::executor::check_block_len(&layout, len)?;
        if block.0 as usize >= self.kv.blocks() {
            return Err(ExecutorError::Blocks(format!("block {} is outside the pool", block.0)));
        }
        Ok(())
    }
}
