//! The Llama-family model on CPU: weights from GGUF or a Hugging Face folder (Llama 2/3, SmolLM,
//! Mistral; Qwen2 with its q/k/v biases; Qwen3 with q/k norms; Gemma 1/2/3 with scaled
//! embeddings, GeGLU, post-norms, soft-capping and sliding windows), and the forward pass over a
//! batch of sequence chunks with attention reading K and V from the paged cache.

use crate::executor::SequenceView;
use crate::model::ModelError;
use crate::model::gguf::GgufFile;

use super::attention::{Heads, attend};
pub use super::config::LlamaConfig;
use super::kernels::{rms_norm, rope, rotations};
use super::kv::KvCache;
use super::matrix::{Matrix, Precision};
use super::mlp::{Mlp, MlpBuffers};

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
    /// Expert `expert`'s `rows × cols` matrix of the experts stacked in `name`
    /// (`blk.N.ffn_gate_exps.weight`: `count × rows × cols`).
    fn expert(&self, name: &str, expert: usize, rows: usize, cols: usize, p: Precision) -> Result<Matrix, ModelError>;
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

    fn expert(&self, name: &str, expert: usize, rows: usize, cols: usize, p: Precision) -> Result<Matrix, ModelError> {
        let t = self.tensor(name)?;
        let shape = t.shape();
        if shape.len() != 3 || shape[1..] != [rows, cols] || expert >= shape[0] {
            return Err(ModelError::Metadata(format!(
                "{name} has shape {shape:?}, expected [experts > {expert}, {rows}, {cols}]"
            )));
        }
        let per_expert = t
            .dtype
            .byte_size((rows * cols) as u64)
            .ok_or_else(|| ModelError::Unsupported(format!("tensor `{name}` of type {}", t.dtype)))?
            as usize;
        let bytes = &self.tensor_bytes(t)?[expert * per_expert..][..per_expert];
        Matrix::from_ggml(t.dtype, bytes, rows, cols, p)
            .ok_or_else(|| ModelError::Unsupported(format!("tensor `{name}` of type {}", t.dtype)))
    }
}

impl Linear {
    pub(super) fn load(
        g: &dyn WeightSource,
        name: &str,
        rows: usize,
        cols: usize,
        p: Precision,
    ) -> Result<Self, ModelError> {
        let w = g.matrix(&format!("{name}.weight"), rows, cols, p)?;
        let bias_name = format!("{name}.bias");
        let bias = if g.has(&bias_name) { Some(g.vector(&bias_name, rows)?) } else { None };
        Ok(Self { w, bias })
    }

    /// Several projections of the same input as one (their outputs side by side in each row).
    pub(super) fn stack(parts: Vec<Linear>) -> Self {
        let bias = parts
            .iter()
            .any(|l| l.bias.is_some())
            .then(|| parts.iter().flat_map(|l| l.bias.clone().unwrap_or_else(|| vec![0.0; l.w.rows])).collect());
        Self { w: Matrix::stack(parts.into_iter().map(|l| l.w).collect()), bias }
    }

    /// Bytes the weights and bias take in memory.
    pub fn bytes(&self) -> usize {
        self.w.bytes() + self.bias.as_ref().map_or(0, |b| 4 * b.len())
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
    /// Per-head RMSNorm weights of q and of k (`head_dim` each).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    o: Linear,
    /// RMSNorm of the attention output before the residual.
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// RMSNorm of the MLP output before the residual.
    post_ffn_norm: Option<Vec<f32>>,
    mlp: Mlp,
}

pub struct LlamaModel {
    pub config: LlamaConfig,
    embed: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// The output projection; None when tied to the embeddings.
    output: Option<Linear>,
    /// RoPE's inverse frequencies, and those of windowed layers where they differ (Gemma 3).
    inv_freq: Vec<f32>,
    inv_freq_local: Option<Vec<f32>>,
}

impl Layer {
    fn bytes(&self) -> usize {
        let vectors = [Some(&self.attn_norm), self.q_norm.as_ref(), self.k_norm.as_ref(), self.post_attn_norm.as_ref()]
            .into_iter()
            .chain([Some(&self.ffn_norm), self.post_ffn_norm.as_ref()])
            .flatten()
            .map(|v| 4 * v.len())
            .sum::<usize>();
        self.qkv.bytes() + self.o.bytes() + self.mlp.bytes() + vectors
    }
}

impl LlamaModel {
    /// Bytes the weights take in memory, as the chosen precision stores them.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self.layers.iter().map(Layer::bytes).sum();
        self.embed.bytes() + layers + 4 * self.norm.len() + self.output.as_ref().map_or(0, Linear::bytes)
    }

    pub fn from_gguf(g: &GgufFile, precision: Precision) -> Result<Self, ModelError> {
        Self::load(LlamaConfig::from_gguf(g)?, g, precision)
    }

    /// Build the model from `config` and tensors named as GGUF names them.
    pub fn load(c: LlamaConfig, g: &dyn WeightSource, precision: Precision) -> Result<Self, ModelError> {
        let (h, kvw, qw, hd) = (c.hidden, c.kv_width(), c.q_width(), c.head_dim);
        let embed = g.matrix("token_embd.weight", c.vocab, h, precision)?;
        let layers = (0..c.layers)
            .map(|i| {
                let p = format!("blk.{i}");
                let norm = |name: &str, len: usize, on: bool| -> Result<Option<Vec<f32>>, ModelError> {
                    on.then(|| g.vector(&format!("{p}.{name}.weight"), len)).transpose()
                };
                Ok(Layer {
                    attn_norm: g.vector(&format!("{p}.attn_norm.weight"), h)?,
                    // Phi-3 stores q, k and v fused, in our layout already.
                    qkv: if g.has(&format!("{p}.attn_qkv.weight")) {
                        Linear::load(g, &format!("{p}.attn_qkv"), qw + 2 * kvw, h, precision)?
                    } else {
                        Linear::stack(vec![
                            Linear::load(g, &format!("{p}.attn_q"), qw, h, precision)?,
                            Linear::load(g, &format!("{p}.attn_k"), kvw, h, precision)?,
                            Linear::load(g, &format!("{p}.attn_v"), kvw, h, precision)?,
                        ])
                    },
                    q_norm: norm("attn_q_norm", hd, c.qk_norm)?,
                    k_norm: norm("attn_k_norm", hd, c.qk_norm)?,
                    o: Linear::load(g, &format!("{p}.attn_output"), h, qw, precision)?,
                    post_attn_norm: norm("post_attention_norm", h, c.post_norms)?,
                    ffn_norm: g.vector(&format!("{p}.ffn_norm.weight"), h)?,
                    post_ffn_norm: norm("post_ffw_norm", h, c.post_norms)?,
                    mlp: Mlp::load(&c, g, i, precision)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let output =
            if g.has("output.weight") { Some(Linear::load(g, "output", c.vocab, h, precision)?) } else { None };
        let (inv_freq, inv_freq_local) = (c.inv_freq(false), c.rope_base_local.map(|_| c.inv_freq(true)));
        Ok(Self {
            embed,
            layers,
            norm: g.vector("output_norm.weight", h)?,
            output,
            inv_freq,
            inv_freq_local,
            config: c,
        })
    }

    /// Serve at most `tokens` of context. LongRoPE's frequencies depend on the served context, so
    /// they are chosen again.
    pub fn limit_context(&mut self, tokens: usize) {
        self.config.context_length = self.config.context_length.min(tokens);
        if self.config.long_rope.is_some() {
            self.inv_freq = self.config.inv_freq(false);
        }
    }

    /// Experts run so far, over every layer and step: a step runs each expert at most once a
    /// layer, whatever the batch.
    pub fn expert_passes(&self) -> u64 {
        self.layers.iter().map(|l| l.mlp.expert_passes()).sum()
    }

    /// Run each sequence's chunk `tokens[start..]`, writing K and V into `kv` at the sequence's
    /// blocks, and return next-token logits for the sequences that want them.
    pub fn forward(&self, batch: &[SequenceView<'_>], kv: &mut KvCache) -> Vec<Option<Vec<f32>>> {
        let c = &self.config;
        let (h, kvw, hd, qw) = (c.hidden, c.kv_width(), c.head_dim, c.q_width());
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
        if c.embed_scale {
            let s = (h as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        let mut xn = vec![0.0f32; n * h];
        let (mut q, mut k, mut v) = (vec![0.0f32; n * qw], vec![0.0f32; n * kvw], vec![0.0f32; n * kvw]);
        let mut attn = vec![0.0f32; n * qw];
        let (mut proj, mut normed) = (vec![0.0f32; n * h], vec![0.0f32; n * h]);
        let mut qkv = vec![0.0f32; n * (qw + 2 * kvw)];
        let mut head_in = vec![0.0f32; hd];
        // Rotation angles per row (the same in every layer of a kind and every head), and each
        // row's block table.
        let half = self.inv_freq.len();
        let scale = c.rope_scale();
        let angles =
            |inv: &[f32]| -> Vec<(f32, f32)> { rows.iter().flat_map(|&(_, p)| rotations(p, inv, scale)).collect() };
        let rot_global = angles(&self.inv_freq);
        let rot_local = self.inv_freq_local.as_deref().map(angles);
        let tables: Vec<_> = rows.iter().map(|&(s, p)| (batch[s].blocks, p)).collect();
        let (mut scratch, mut mlp_bufs) = (Vec::new(), MlpBuffers::default());
        // `x += norm(y)` where the layer has a post-norm, else `x += y`.
        let residual = |x: &mut [f32], y: &[f32], norm: Option<&Vec<f32>>, normed: &mut [f32]| {
            let y = match norm {
                Some(w) => {
                    rms_norm(y, w, c.eps, normed);
                    &*normed
                }
                None => y,
            };
            x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let window = c.window(li);
            let rot = match (&rot_local, window) {
                (Some(local), Some(_)) => local,
                _ => &rot_global,
            };
            rms_norm(&x, &layer.attn_norm, c.eps, &mut xn);
            layer.qkv.forward(&xn, n, &mut qkv, &mut scratch);
            let width = qw + 2 * kvw;
            for (r, row) in qkv.chunks_exact(width).enumerate() {
                q[r * qw..(r + 1) * qw].copy_from_slice(&row[..qw]);
                k[r * kvw..(r + 1) * kvw].copy_from_slice(&row[qw..qw + kvw]);
                v[r * kvw..(r + 1) * kvw].copy_from_slice(&row[qw + kvw..]);
            }
            for (r, &(s, p)) in rows.iter().enumerate() {
                let rot = &rot[r * half..(r + 1) * half];
                let q_and_k =
                    [(&mut q[r * qw..(r + 1) * qw], &layer.q_norm), (&mut k[r * kvw..(r + 1) * kvw], &layer.k_norm)];
                for (heads, norm) in q_and_k {
                    for head in heads.chunks_exact_mut(hd) {
                        if let Some(w) = norm {
                            head_in.copy_from_slice(head);
                            rms_norm(&head_in, w, c.eps, head);
                        }
                        rope(head, rot, c.rope_style);
                    }
                }
                kv.write(li, batch[s].blocks, p, &k[r * kvw..(r + 1) * kvw], &v[r * kvw..(r + 1) * kvw]);
            }
            let shape = Heads {
                heads: c.heads,
                kv_heads: c.kv_heads,
                head_dim: hd,
                scale: c.attn_scale,
                softcap: c.attn_softcap,
                window,
            };
            attend(shape, li, kv, &q, &tables, &mut attn);
            layer.o.forward(&attn, n, &mut proj, &mut scratch);
            residual(&mut x, &proj, layer.post_attn_norm.as_ref(), &mut normed);
            rms_norm(&x, &layer.ffn_norm, c.eps, &mut xn);
            layer.mlp.forward(c.activation, &xn, n, &mut proj, &mut scratch, &mut mlp_bufs);
            residual(&mut x, &proj, layer.post_ffn_norm.as_ref(), &mut normed);
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
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        for (i, &(s, _)) in wanted.iter().enumerate() {
            let row = &logits[i * c.vocab..(i + 1) * c.vocab];
            out[s].get_or_insert_with(Vec::new).extend_from_slice(row);
        }
        out
    }
}
