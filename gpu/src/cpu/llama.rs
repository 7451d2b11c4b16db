//! The Llama-family model on CPU: configuration and weights from GGUF (Llama 2/3, SmolLM,
//! Mistral; Qwen2 with its q/k/v biases), and the forward pass over a batch of sequence chunks
//! with attention reading K and V from the paged cache.

use crate::executor::SequenceView;
use crate::model::ModelError;
use crate::model::gguf::GgufFile;

use super::attention::{Heads, attend};
use super::kernels::{RopeStyle, rms_norm, rope, rotations, silu};
use super::kv::KvCache;
use super::matrix::{Matrix, Precision};
use super::threads::for_each_chunk_mut;

/// Shapes and constants of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub arch: String,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub context_length: usize,
    /// Per-frequency divisors of RoPE (Llama 3.1's frequency scaling), `head_dim / 2` of them.
    pub rope_freq_factors: Option<Vec<f32>>,
}

/// Llama 3.1 RoPE scaling: the divisor of each rotary frequency, as Hugging Face computes it
/// (`rope_type = "llama3"`): long wavelengths are slowed by `factor`, short ones kept, and the
/// band between interpolated.
pub fn llama3_rope_factors(
    head_dim: usize,
    base: f32,
    factor: f32,
    low: f32,
    high: f32,
    original_context: f32,
) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (original_context / low, original_context / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = base.powf(-(2.0 * i as f32) / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            let scaled = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / factor
            } else {
                let smooth = (original_context / wavelen - low) / (high - low);
                (1.0 - smooth) * freq / factor + smooth * freq
            };
            freq / scaled
        })
        .collect()
}

impl LlamaConfig {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let arch = g.get_str("general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2" | "mistral") {
            return Err(ModelError::Unsupported(format!(
                "general.architecture \"{arch}\" (llama, qwen2 and mistral are)"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| g.get_u64(&key(k)).map(|v| v as usize);
        let heads = u("attention.head_count")?;
        let hidden = u("embedding_length")?;
        if heads == 0 || hidden % heads != 0 {
            return Err(ModelError::Metadata(format!("{hidden} hidden units do not split into {heads} heads")));
        }
        let head_dim = hidden / heads;
        let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(ModelError::Metadata(format!("{heads} heads do not group over {kv_heads} KV heads")));
        }
        if let Ok(rot) = u("rope.dimension_count")
            && rot != head_dim
        {
            return Err(ModelError::Unsupported(format!("partial rotary embeddings ({rot} of {head_dim} dimensions)")));
        }
        if let Ok(kind) = g.get_str(&key("rope.scaling.type"))
            && kind != "none"
        {
            return Err(ModelError::Unsupported(format!("RoPE scaling \"{kind}\"")));
        }
        // llama.cpp stores Llama 3.1's frequency scaling as divisors in this tensor.
        let rope_freq_factors = match g.tensor("rope_freqs.weight") {
            Ok(_) => Some(g.vector("rope_freqs.weight", head_dim / 2)?),
            Err(_) => None,
        };
        let vocab = match g.get("tokenizer.ggml.tokens")? {
            crate::model::gguf::GgufValue::Array(v) => v.len(),
            _ => return Err(ModelError::Metadata("tokenizer.ggml.tokens is not an array".into())),
        };
        Ok(Self {
            layers: u("block_count")?,
            ffn: u("feed_forward_length")?,
            eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_base: g.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            // GGUF conversions permute Llama's q/k rows for interleaved rotation; Qwen2 keeps halves.
            rope_style: if arch == "qwen2" { RopeStyle::Halves } else { RopeStyle::Interleaved },
            context_length: u("context_length").unwrap_or(2048),
            rope_freq_factors,
            arch,
            hidden,
            heads,
            kv_heads,
            head_dim,
            vocab,
        })
    }

    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// A weight matrix `rows × cols` (kept quantized where a kernel exists) with an optional bias.
pub struct Linear {
    pub w: Matrix,
    pub bias: Option<Vec<f32>>,
}

/// Where a model's tensors come from, named as GGUF names them (`blk.0.attn_q.weight`).
pub trait WeightSource {
    /// A `rows × cols` matrix.
    fn matrix(&self, name: &str, rows: usize, cols: usize, precision: Precision) -> Result<Matrix, ModelError>;
    /// A vector of `len` values.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError>;
    fn has(&self, name: &str) -> bool;
}

impl WeightSource for GgufFile {
    fn matrix(&self, name: &str, rows: usize, cols: usize, precision: Precision) -> Result<Matrix, ModelError> {
        let t = self.tensor(name)?;
        if t.shape() != [rows, cols] {
            return Err(ModelError::Metadata(format!("{name} has shape {:?}, expected [{rows}, {cols}]", t.shape())));
        }
        Matrix::from_ggml(t.dtype, self.tensor_bytes(t)?, rows, cols, precision)
            .ok_or_else(|| ModelError::Unsupported(format!("tensor `{name}` of type {}", t.dtype)))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let v = self.dequantize(name)?;
        if v.len() != len {
            return Err(ModelError::Metadata(format!("{name} has {} values, expected {len}", v.len())));
        }
        Ok(v)
    }

    fn has(&self, name: &str) -> bool {
        self.tensor(name).is_ok()
    }
}

impl Linear {
    fn load(g: &dyn WeightSource, name: &str, rows: usize, cols: usize, p: Precision) -> Result<Self, ModelError> {
        let w = g.matrix(&format!("{name}.weight"), rows, cols, p)?;
        let bias_name = format!("{name}.bias");
        let bias = if g.has(&bias_name) { Some(g.vector(&bias_name, rows)?) } else { None };
        Ok(Self { w, bias })
    }

    /// Several projections of the same input as one (their outputs side by side in each row).
    fn stack(parts: Vec<Linear>) -> Self {
        let bias = parts
            .iter()
            .any(|l| l.bias.is_some())
            .then(|| parts.iter().flat_map(|l| l.bias.clone().unwrap_or_else(|| vec![0.0; l.w.rows])).collect());
        Self { w: Matrix::stack(parts.into_iter().map(|l| l.w).collect()), bias }
    }

    /// `out = x · Wᵀ (+ b)` for `n` input rows.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
        self.w.matmul(x, n, self.bias.as_deref(), out, scratch);
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v fused: each output row is `[q | k | v]`.
    qkv: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    /// gate and up fused: each output row is `[gate | up]`.
    gate_up: Linear,
    down: Linear,
}

pub struct LlamaModel {
    pub config: LlamaConfig,
    embed: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// The output projection; None when tied to the embeddings.
    output: Option<Linear>,
    inv_freq: Vec<f32>,
}

impl LlamaModel {
    pub fn from_gguf(g: &GgufFile, precision: Precision) -> Result<Self, ModelError> {
        Self::load(LlamaConfig::from_gguf(g)?, g, precision)
    }

    /// Build the model from `config` and tensors named as GGUF names them.
    pub fn load(c: LlamaConfig, g: &dyn WeightSource, precision: Precision) -> Result<Self, ModelError> {
        let (h, kvw) = (c.hidden, c.kv_width());
        let embed = g.matrix("token_embd.weight", c.vocab, h, precision)?;
        let layers = (0..c.layers)
            .map(|i| {
                let p = format!("blk.{i}");
                Ok(Layer {
                    attn_norm: g.vector(&format!("{p}.attn_norm.weight"), h)?,
                    qkv: Linear::stack(vec![
                        Linear::load(g, &format!("{p}.attn_q"), h, h, precision)?,
                        Linear::load(g, &format!("{p}.attn_k"), kvw, h, precision)?,
                        Linear::load(g, &format!("{p}.attn_v"), kvw, h, precision)?,
                    ]),
                    o: Linear::load(g, &format!("{p}.attn_output"), h, h, precision)?,
                    ffn_norm: g.vector(&format!("{p}.ffn_norm.weight"), h)?,
                    gate_up: Linear::stack(vec![
                        Linear::load(g, &format!("{p}.ffn_gate"), c.ffn, h, precision)?,
                        Linear::load(g, &format!("{p}.ffn_up"), c.ffn, h, precision)?,
                    ]),
                    down: Linear::load(g, &format!("{p}.ffn_down"), h, c.ffn, precision)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let output =
            if g.has("output.weight") { Some(Linear::load(g, "output", c.vocab, h, precision)?) } else { None };
        let half = c.head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let f = c.rope_base.powf(-(2.0 * i as f32) / c.head_dim as f32);
                c.rope_freq_factors.as_ref().map_or(f, |d| f / d[i])
            })
            .collect();
        Ok(Self { embed, layers, norm: g.vector("output_norm.weight", h)?, output, inv_freq, config: c })
    }

    /// Run each sequence's chunk `tokens[start..]`, writing K and V into `kv` at the sequence's
    /// blocks, and return next-token logits for the sequences that want them.
    pub fn forward(&self, batch: &[SequenceView<'_>], kv: &mut KvCache) -> Vec<Option<Vec<f32>>> {
        let c = &self.config;
        let (h, kvw, hd) = (c.hidden, c.kv_width(), c.head_dim);
        // Flatten the batch: one row per new token, remembering its sequence and position.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (s, view) in batch.iter().enumerate() {
            rows.extend((view.start..view.tokens.len()).map(|p| (s, p)));
        }
        let n = rows.len();
        let mut x = vec![0.0f32; n * h];
        for (r, &(s, p)) in rows.iter().enumerate() {
            let tok = batch[s].tokens[p] as usize;
            self.embed.row(tok, &mut x[r * h..(r + 1) * h]);
        }
        let mut xn = vec![0.0f32; n * h];
        let (mut q, mut k, mut v) = (vec![0.0f32; n * h], vec![0.0f32; n * kvw], vec![0.0f32; n * kvw]);
        let mut attn = vec![0.0f32; n * h];
        let mut proj = vec![0.0f32; n * h];
        let (mut gate, mut gate_up) = (vec![0.0f32; n * c.ffn], vec![0.0f32; n * 2 * c.ffn]);
        let mut qkv = vec![0.0f32; n * (h + 2 * kvw)];
        // Rotation angles per row (the same in every layer and head), and each row's block table.
        let half = self.inv_freq.len();
        let rot: Vec<(f32, f32)> = rows.iter().flat_map(|&(_, p)| rotations(p, &self.inv_freq)).collect();
        let tables: Vec<_> = rows.iter().map(|&(s, p)| (batch[s].blocks, p)).collect();
        let shape = Heads { heads: c.heads, kv_heads: c.kv_heads, head_dim: hd };
        let mut scratch = Vec::new();
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.eps, &mut xn);
            layer.qkv.forward(&xn, n, &mut qkv, &mut scratch);
            let width = h + 2 * kvw;
            for (r, row) in qkv.chunks_exact(width).enumerate() {
                q[r * h..(r + 1) * h].copy_from_slice(&row[..h]);
                k[r * kvw..(r + 1) * kvw].copy_from_slice(&row[h..h + kvw]);
                v[r * kvw..(r + 1) * kvw].copy_from_slice(&row[h + kvw..]);
            }
            for (r, &(s, p)) in rows.iter().enumerate() {
                let rot = &rot[r * half..(r + 1) * half];
                for head in q[r * h..(r + 1) * h].chunks_exact_mut(hd) {
                    rope(head, rot, c.rope_style);
                }
                for head in k[r * kvw..(r + 1) * kvw].chunks_exact_mut(hd) {
                    rope(head, rot, c.rope_style);
                }
                kv.write(li, batch[s].blocks, p, &k[r * kvw..(r + 1) * kvw], &v[r * kvw..(r + 1) * kvw]);
            }
            attend(shape, li, kv, &q, &tables, &mut attn);
            layer.o.forward(&attn, n, &mut proj, &mut scratch);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            rms_norm(&x, &layer.ffn_norm, c.eps, &mut xn);
            layer.gate_up.forward(&xn, n, &mut gate_up, &mut scratch);
            for_each_chunk_mut(&mut gate, c.ffn, |r, out| {
                let (g, u) = gate_up[r * 2 * c.ffn..(r + 1) * 2 * c.ffn].split_at(c.ffn);
                for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                    *o = silu(g) * u;
                }
            });
            layer.down.forward(&gate, n, &mut proj, &mut scratch);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        // Logits for the last token of sequences that want them, and for every token of those
        // that score their prompt.
        let mut out = vec![None; batch.len()];
        // Rows are in batch order: each sequence's are the `len` after the previous ones'.
        let mut wanted: Vec<(usize, usize)> = Vec::new();
        let mut first = 0;
        for (s, v) in batch.iter().enumerate() {
            let len = v.tokens.len() - v.start;
            wanted.extend((first + len.saturating_sub(v.logit_rows())..first + len).map(|r| (s, r)));
            first += len;
        }
        if wanted.is_empty() {
            return out;
        }
        let mut last = vec![0.0f32; wanted.len() * h];
        for (i, &(_, r)) in wanted.iter().enumerate() {
            rms_norm(&x[r * h..(r + 1) * h], &self.norm, c.eps, &mut last[i * h..(i + 1) * h]);
        }
        let mut logits = vec![0.0f32; wanted.len() * c.vocab];
        match &self.output {
            Some(o) => o.forward(&last, wanted.len(), &mut logits, &mut scratch),
            None => self.embed.matmul(&last, wanted.len(), None, &mut logits, &mut scratch),
        }
        for (i, &(s, _)) in wanted.iter().enumerate() {
            let row = &logits[i * c.vocab..(i + 1) * c.vocab];
            out[s].get_or_insert_with(Vec::new).extend_from_slice(row);
        }
        out
    }
}
