//! A decoder's shapes and constants: the Llama block (Llama 2/3, SmolLM, Mistral, Qwen2) and the
//! ways Qwen3, Gemma 1/2/3, Phi-3/4 and the mixtures of experts (Mixtral, Qwen3-MoE) depart from
//! it, read from GGUF metadata (Hugging Face folders are read in `model::hf`). Both backends load from this; the fingerprint of a model's KV hashes it.

use crate::model::ModelError;
use crate::model::gguf::GgufFile;

use super::kernels::RopeStyle;
use super::llama::WeightSource;

/// The model families this build runs, by their GGUF `general.architecture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Qwen3's block with a mixture of experts for its MLP.
    Qwen3Moe,
    /// Llama's block with a mixture of experts (GGUF `llama` with `llama.expert_count`).
    Mixtral,
    Gemma,
    Gemma2,
    Gemma3,
    /// Phi-3 and Phi-4: Llama's block with q/k/v and gate/up stored fused, and LongRoPE.
    Phi3,
}

impl Family {
    pub const ALL: [Family; 10] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Qwen3Moe,
        Family::Mixtral,
        Family::Gemma,
        Family::Gemma2,
        Family::Gemma3,
        Family::Phi3,
    ];

    /// The GGUF `general.architecture` (and metadata key prefix).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Family::Llama | Family::Mixtral => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Qwen3Moe => "qwen3moe",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3",
            Family::Phi3 => "phi3",
        }
    }

    /// The Hugging Face `architectures[0]` of a causal language model of this family.
    pub fn hf_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Qwen3Moe => "Qwen3MoeForCausalLM",
            Family::Mixtral => "MixtralForCausalLM",
            Family::Gemma => "GemmaForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// The Hugging Face `model_type` of a causal language model of this family (which
    /// Transformers picks the model class by).
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Family::Mixtral => "mixtral",
            Family::Qwen3Moe => "qwen3_moe",
            Family::Gemma3 => "gemma3_text",
            f => f.gguf_name(),
        }
    }

    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.gguf_name() == name)
    }

    pub fn from_hf_class(class: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.hf_class() == class)
    }

    /// The families by name, for errors that list what is supported.
    pub fn names(of: fn(Family) -> &'static str) -> String {
        let mut names: Vec<&str> = Vec::new();
        for name in Self::ALL.map(of) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.join(", ")
    }

    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3)
    }

    /// How GGUF conversions lay out a head's dimensions for RoPE: llama.cpp permutes Llama's and
    /// Mistral's q and k rows for interleaved pairs and leaves the others in Hugging Face's halves.
    pub fn gguf_rope_style(self) -> RopeStyle {
        match self {
            Family::Llama | Family::Mistral | Family::Mixtral => RopeStyle::Interleaved,
            _ => RopeStyle::Halves,
        }
    }

    /// Whether Hugging Face stores this family's RMSNorm weights as offsets from 1 (Gemma's
    /// `x · (1 + w)`); llama.cpp's conversion adds the 1, so GGUF weights are plain gains.
    pub fn hf_norm_offset(self) -> f32 {
        if self.is_gemma() { 1.0 } else { 0.0 }
    }

    /// The window pattern llama.cpp gives the family: every `n`th layer is global, the others
    /// slide (Gemma 2: 2, Gemma 3: 6); None where every layer is global.
    fn swa_period(self) -> Option<usize> {
        match self {
            Family::Gemma2 => Some(2),
            Family::Gemma3 => Some(6),
            _ => None,
        }
    }
}

/// The activation of the gated MLP: `act(gate) · up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): Llama, Qwen.
    Silu,
    /// GELU, tanh approximation (GeGLU): Gemma.
    GeluTanh,
}

/// A mixture of experts in place of the MLP (Mixtral, Qwen3-MoE): a router scores every expert
/// for each token, the `used` best run (SwiGLU experts of `ffn` units), and their outputs are
/// summed with the router's softmax weights, renormalised over the chosen ones where `norm_top`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Experts {
    pub count: usize,
    pub used: usize,
    pub ffn: usize,
    pub norm_top: bool,
}

/// Shapes and constants of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Dimensions of a head; `heads · head_dim` may differ from `hidden` (Gemma, Qwen3).
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub context_length: usize,
    /// Per-frequency divisors of RoPE (Llama 3.1's frequency scaling), `head_dim / 2` of them.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Linear RoPE scaling: positions are divided by this factor (on global layers only where
    /// the family has windowed ones, as Gemma 3 defines it).
    pub rope_linear: Option<f32>,
    /// RMSNorm of each q and k head before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Embeddings multiplied by √hidden (Gemma).
    pub embed_scale: bool,
    pub activation: Activation,
    /// RMSNorms of the attention and MLP outputs before they join the residual (Gemma 2 and 3).
    pub post_norms: bool,
    /// What q·k is multiplied by: 1/√head_dim, or Gemma's `query_pre_attn_scalar^-½`.
    pub attn_scale: f32,
    /// `cap · tanh(score / cap)` of attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// The same of the final logits (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Positions a windowed layer's query sees, itself included.
    pub sliding_window: Option<usize>,
    /// Which layers are windowed (empty: none).
    pub windowed: Vec<bool>,
    /// RoPE base of the windowed layers (Gemma 3's local layers), where it differs.
    pub rope_base_local: Option<f32>,
    /// The MLP is a mixture of experts.
    pub experts: Option<Experts>,
    /// Phi-3's LongRoPE: per-frequency divisors for short and long contexts, and the factor that
    /// scales every rotation.
    pub long_rope: Option<LongRope>,
}

/// The largest head the CUDA attention kernel takes (`MAX_DIMS_PER_LANE` × 32 in `kernels.cu`).
pub const CUDA_MAX_HEAD_DIM: usize = 256;

/// LongRoPE (Phi-3's `rope_scaling` of type `longrope`): RoPE's frequencies divided by `short`
/// factors, or by `long` ones where the served context exceeds `original_context` (as llama.cpp
/// chooses, once for the whole context: keys in the cache were rotated with one set), and every
/// rotation scaled by `attn_factor` (Hugging Face's attention factor, `√(1 + ln s / ln n)` for a
/// context `s` times the original `n`).
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
    pub original_context: usize,
    pub attn_factor: f32,
}

impl LongRope {
    /// LongRoPE for heads of `head_dim`, its factors checked: `head_dim / 2` of each, and an
    /// original context above 1. Without `attn_factor` it is Hugging Face's for a model of
    /// `context` positions.
    pub fn new(
        short: Vec<f32>,
        long: Vec<f32>,
        original_context: usize,
        attn_factor: Option<f32>,
        head_dim: usize,
        context: usize,
    ) -> Result<Self, ModelError> {
        for (name, v) in [("short", &short), ("long", &long)] {
            if v.len() != head_dim / 2 {
                return Err(ModelError::Metadata(format!(
                    "rope_scaling.{name}_factor has {} factors for heads of {head_dim}",
                    v.len()
                )));
            }
        }
        if original_context < 2 {
            return Err(ModelError::Metadata(format!(
                "LongRoPE's original context of {original_context} positions (it must be above 1)"
            )));
        }
        let attn_factor = attn_factor.unwrap_or_else(|| Self::default_attn_factor(context, original_context));
        Ok(Self { short, long, original_context, attn_factor })
    }

    /// Hugging Face's attention factor for a context `context` against the original one.
    pub fn default_attn_factor(context: usize, original_context: usize) -> f32 {
        let scale = context as f64 / original_context as f64;
        if scale <= 1.0 { 1.0 } else { (1.0 + scale.ln() / (original_context as f64).ln()).sqrt() as f32 }
    }

    /// The divisors for a served context of `context` positions.
    pub fn factors(&self, context: usize) -> &[f32] {
        if context > self.original_context { &self.long } else { &self.short }
    }
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

/// The shapes every family has, from whichever format.
#[derive(Clone, Copy, Debug)]
pub struct Shapes {
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// None: `hidden / heads`.
    pub head_dim: Option<usize>,
    pub vocab: usize,
}

impl LlamaConfig {
    /// A config of `family` with the family's own variations (as llama.cpp runs it from GGUF),
    /// checking that the shapes fit together.
    pub fn new(family: Family, s: Shapes, eps: f32, rope_base: f32, context_length: usize) -> Result<Self, ModelError> {
        if s.heads == 0 || (s.head_dim.is_none() && !s.hidden.is_multiple_of(s.heads)) {
            return Err(ModelError::Metadata(format!("{} hidden units do not split into {} heads", s.hidden, s.heads)));
        }
        let head_dim = s.head_dim.unwrap_or(s.hidden / s.heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ModelError::Metadata(format!("head size {head_dim} is not a positive even number")));
        }
        if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
            return Err(ModelError::Metadata(format!("{} heads do not group over {} KV heads", s.heads, s.kv_heads)));
        }
        let gemma = family.is_gemma();
        let windowed = match family.swa_period() {
            Some(n) => (0..s.layers).map(|l| l % n < n - 1).collect(),
            None => Vec::new(),
        };
        // llama.cpp: the 27B Gemma 2 and 3 scale queries by their hidden size per head, the others
        // by their head size (Hugging Face's `query_pre_attn_scalar`).
        let scalar = match (family, s.layers) {
            (Family::Gemma2, 46) | (Family::Gemma3, 62) => s.hidden / s.heads,
            _ => head_dim,
        };
        Ok(Self {
            family,
            layers: s.layers,
            hidden: s.hidden,
            ffn: s.ffn,
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim,
            vocab: s.vocab,
            eps,
            rope_base,
            rope_style: family.gguf_rope_style(),
            context_length,
            rope_freq_factors: None,
            rope_linear: None,
            qk_norm: matches!(family, Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3),
            embed_scale: gemma,
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
            post_norms: matches!(family, Family::Gemma2 | Family::Gemma3),
            attn_scale: 1.0 / (scalar as f32).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            sliding_window: None,
            windowed,
            rope_base_local: (family == Family::Gemma3).then_some(10_000.0),
            experts: None,
            long_rope: None,
        })
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let arch = g.get_str("general.architecture")?;
        let family = Family::from_gguf_name(arch).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "general.architecture \"{arch}\" ({} are)",
                Family::names(Family::gguf_name)
            ))
        })?;
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| g.get_u64(&key(k)).map(|v| v as usize);
        let f = |k: &str| g.get_f64(&key(k)).ok().map(|v| v as f32);
        let heads = u("attention.head_count")?;
        let head_dim = u("attention.key_length").ok();
        if let (Some(k), Ok(v)) = (head_dim, u("attention.value_length"))
            && k != v
        {
            return Err(ModelError::Unsupported(format!("keys of {k} and values of {v} dimensions")));
        }
        let vocab = match g.get("tokenizer.ggml.tokens")? {
            crate::model::gguf::GgufValue::Array(v) => v.len(),
            _ => return Err(ModelError::Metadata("tokenizer.ggml.tokens is not an array".into())),
        };
        let shapes = Shapes {
            layers: u("block_count")?,
            hidden: u("embedding_length")?,
            ffn: u("feed_forward_length")?,
            heads,
            kv_heads: u("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            vocab,
        };
        let eps = g.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        let base = f("rope.freq_base").unwrap_or(10_000.0);
        let mut c = Self::new(family, shapes, eps, base, u("context_length").unwrap_or(2048))?;
        if let Ok(rot) = u("rope.dimension_count")
            && rot != c.head_dim
        {
            return Err(ModelError::Unsupported(format!(
                "partial rotary embeddings ({rot} of {} dimensions)",
                c.head_dim
            )));
        }
        match g.get_str(&key("rope.scaling.type")) {
            Err(_) | Ok("none") => {}
            Ok("linear") => c.rope_linear = f("rope.scaling.factor").filter(|&x| x != 1.0),
            Ok(kind) => return Err(ModelError::Unsupported(format!("RoPE scaling \"{kind}\""))),
        }
        // llama.cpp stores Llama 3.1's frequency scaling as divisors in this tensor.
        if g.tensor("rope_freqs.weight").is_ok() {
            c.rope_freq_factors = Some(g.vector("rope_freqs.weight", c.head_dim / 2)?);
        }
        // Phi-3's LongRoPE, as llama.cpp's conversion stores it.
        if g.tensor("rope_factors_long.weight").is_ok() {
            let half = c.head_dim / 2;
            c.long_rope = Some(LongRope::new(
                g.vector("rope_factors_short.weight", half)?,
                g.vector("rope_factors_long.weight", half)?,
                u("rope.scaling.original_context_length")?,
                Some(f("rope.scaling.attn_factor").unwrap_or(1.0)),
                c.head_dim,
                c.context_length,
            )?);
        }
        c.attn_softcap = f("attn_logit_softcapping");
        c.final_softcap = f("final_logit_softcapping");
        // Phi-3 mini 4K's `attention.sliding_window` (2047 positions) is ignored, as llama.cpp
        // ignores it ("Phi SWA is currently disabled").
        if !c.windowed.is_empty() {
            c.sliding_window = Some(u("attention.sliding_window")?);
        }
        // Mixtral is `llama` with experts; Qwen3-MoE gives its experts' width apart. llama.cpp
        // renormalises the chosen weights for both.
        if let Ok(count) = u("expert_count")
            && count > 0
        {
            let used = u("expert_used_count")?;
            if used == 0 || used > count {
                return Err(ModelError::Metadata(format!("{used} of {count} experts used per token")));
            }
            let ffn = u("expert_feed_forward_length").unwrap_or(c.ffn);
            c.experts = Some(Experts { count, used, ffn, norm_top: true });
            if family == Family::Llama {
                c.family = Family::Mixtral;
            }
        } else if family == Family::Qwen3Moe {
            return Err(ModelError::Metadata(format!("{arch}.expert_count is missing")));
        }
        Ok(c)
    }

    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The width of all query heads side by side.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The window of layer `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.windowed.get(layer).copied().unwrap_or(false))
    }

    /// RoPE's inverse frequencies for a windowed (`local`) or global layer.
    pub fn inv_freq(&self, local: bool) -> Vec<f32> {
        let base = if local { self.rope_base_local.unwrap_or(self.rope_base) } else { self.rope_base };
        let linear = if local && self.rope_base_local.is_some() { None } else { self.rope_linear };
        let long = self.long_rope.as_ref().map(|l| l.factors(self.context_length));
        (0..self.head_dim / 2)
            .map(|i| {
                let f = base.powf(-(2.0 * i as f32) / self.head_dim as f32);
                let f = self.rope_freq_factors.as_ref().map_or(f, |d| f / d[i]);
                let f = long.map_or(f, |d| f / d[i]);
                linear.map_or(f, |s| f / s)
            })
            .collect()
    }

    /// What every RoPE rotation is scaled by (LongRoPE's attention factor; 1 otherwise).
    pub fn rope_scale(&self) -> f32 {
        self.long_rope.as_ref().map_or(1.0, |l| l.attn_factor)
    }

    /// What the CUDA backend cannot run of this model, said in a phrase; None where it runs it
    /// (every family, with heads of an even size up to `CUDA_MAX_HEAD_DIM`).
    pub fn beyond_the_cuda_backend(&self) -> Option<String> {
        let hd = self.head_dim;
        (!hd.is_multiple_of(2) || hd > CUDA_MAX_HEAD_DIM).then(|| {
            format!("heads of {hd} dimensions (the CUDA attention kernel takes even sizes up to {CUDA_MAX_HEAD_DIM})")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_beyond_the_cuda_kernel_are_named() {
        let shapes = |head_dim| Shapes { layers: 1, hidden: 64, ffn: 64, heads: 2, kv_heads: 1, head_dim, vocab: 10 };
        let fits = LlamaConfig::new(Family::Qwen3, shapes(Some(256)), 1e-6, 1e4, 64).unwrap();
        assert_eq!(fits.beyond_the_cuda_backend(), None);
        let wide = LlamaConfig::new(Family::Qwen3, shapes(Some(512)), 1e-6, 1e4, 64).unwrap();
        let said = wide.beyond_the_cuda_backend().expect("too wide");
        assert_eq!(said, "heads of 512 dimensions (the CUDA attention kernel takes even sizes up to 256)");
    }
}
