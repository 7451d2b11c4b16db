//! Hugging Face model folders: `config.json`, one or several `*.safetensors` (f32, f16 or bf16),
//! `tokenizer.json` and `tokenizer_config.json` (with the chat template). Loading, and export of a
//! GGUF model as such a folder (`armature model export --hf DIR`), un-permuting the q and k rows
//! that llama.cpp's conversion interleaves for its RoPE layout.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;

use super::ModelError;
use super::bpe::BpeTokenizer;
use super::gguf::GgufFile;
use super::safetensors::{SafeTensors, write_f32};
use crate::cpu::config::{Experts, Family, LlamaConfig, LongRope, Shapes, llama3_rope_factors};
use crate::cpu::kernels::RopeStyle;
use crate::cpu::llama::WeightSource;
use crate::cpu::matrix::{Matrix, Precision};

#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    num_hidden_layers: usize,
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    /// Phi-4 mini rotates only part of each head; refused (as the GGUF's `rope.dimension_count`).
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    /// Phi-3's LongRoPE: the context its short factors were trained for.
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
    vocab_size: usize,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    /// Qwen3, Gemma: when `heads · head_dim` is not `hidden_size`.
    #[serde(default)]
    head_dim: Option<usize>,
    /// Gemma 2/3: q·k is scaled by its inverse square root.
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    final_logit_softcapping: Option<f64>,
    /// Gemma 2/3's window (other families' `sliding_window`, Mistral's and Phi-3's, which llama.cpp
    /// does not apply either, is ignored).
    #[serde(default)]
    sliding_window: Option<usize>,
    /// `sliding_attention` or `full_attention`, per layer.
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    sliding_window_pattern: Option<usize>,
    /// Gemma 3's RoPE base of its sliding layers.
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    /// Mixtral's experts (each `intermediate_size` wide).
    #[serde(default)]
    num_local_experts: Option<usize>,
    /// Qwen3-MoE's experts (each `moe_intermediate_size` wide).
    #[serde(default)]
    num_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    moe_intermediate_size: Option<usize>,
    #[serde(default)]
    norm_topk_prob: Option<bool>,
    /// Qwen3-MoE: every how many layers is sparse, and the dense ones; only "all sparse" runs here.
    #[serde(default)]
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    mlp_only_layers: Option<Vec<usize>>,
}

#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<String>,
    #[serde(default)]
    bos_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
    #[serde(default)]
    add_bos_token: Option<bool>,
}

/// A special token as tokenizer_config.json spells it: a string, or an object with `content`.
fn token_text(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        None => None,
    }
}

/// The GGUF tensor name's Hugging Face spelling in a model of `family` (Gemma 2 and 3 name their
/// four norms differently from Llama's two).
fn hf_name(gguf: &str, family: Family) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let four_norms = matches!(family, Family::Gemma2 | Family::Gemma3);
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" if four_norms => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" if four_norms => "post_attention_layernorm",
        "post_ffw_norm" if four_norms => "post_feedforward_layernorm",
        "ffn_gate_inp" if family == Family::Mixtral => "block_sparse_moe.gate",
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if family == Family::Phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The Hugging Face name of expert `e`'s part of the stacked GGUF tensor `gguf`
/// (`blk.L.ffn_gate_exps.weight`): Mixtral's `w1`/`w3`/`w2`, Qwen3-MoE's `gate_proj`/`up_proj`/`down_proj`.
fn hf_expert_name(gguf: &str, e: usize, family: Family) -> Option<String> {
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let part = rest.strip_prefix("ffn_")?.strip_suffix("_exps.weight")?;
    let hf = match (family, part) {
        (Family::Mixtral, "gate") => "block_sparse_moe.experts.{e}.w1",
        (Family::Mixtral, "up") => "block_sparse_moe.experts.{e}.w3",
        (Family::Mixtral, "down") => "block_sparse_moe.experts.{e}.w2",
        (_, "gate") => "mlp.experts.{e}.gate_proj",
        (_, "up") => "mlp.experts.{e}.up_proj",
        (_, "down") => "mlp.experts.{e}.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{}.weight", hf.replace("{e}", &e.to_string())))
}

/// Whether a GGUF tensor is an RMSNorm gain (stored as an offset from 1 by Gemma's Hugging Face
/// checkpoints).
fn is_norm(gguf: &str) -> bool {
    gguf.ends_with("norm.weight")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Metadata(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Metadata(format!("{}: {e}", path.display())))
}

/// A Hugging Face model folder, loaded.
pub struct HfModel {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    shards: Vec<SafeTensors>,
}

impl std::fmt::Debug for HfModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfModel").field("dir", &self.dir).field("shards", &self.shards.len()).finish()
    }
}

impl HfModel {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let config = Self::read_config(dir)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| ModelError::Metadata(format!("{}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::Metadata(format!("{}: no .safetensors files", dir.display())));
        }
        let shards = files.iter().map(|f| SafeTensors::open(f)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { dir: dir.to_path_buf(), config, shards })
    }

    /// The model's shapes and constants from the folder's `config.json` alone.
    pub fn read_config(dir: &Path) -> Result<LlamaConfig, ModelError> {
        let c: HfConfig = read_json(&dir.join("config.json"))?;
        let class = c.architectures.first().map(String::as_str);
        let Some(family) = class.and_then(Family::from_hf_class) else {
            let named = class.map_or("none".to_string(), |a| format!("\"{a}\""));
            return Err(ModelError::Unsupported(format!(
                "config.json: architectures {named} ({} are)",
                Family::names(Family::hf_class)
            )));
        };
        let shapes = Shapes {
            layers: c.num_hidden_layers,
            hidden: c.hidden_size,
            ffn: c.intermediate_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.head_dim,
            vocab: c.vocab_size,
        };
        let base = c.rope_theta.unwrap_or(10_000.0) as f32;
        let context = c.max_position_embeddings.unwrap_or(2048);
        let mut config = LlamaConfig::new(family, shapes, c.rms_norm_eps as f32, base, context)?;
        config.rope_style = RopeStyle::Halves;
        let head_dim = config.head_dim;
        if let Some(p) = c.partial_rotary_factor.filter(|&p| p != 1.0) {
            return Err(ModelError::Unsupported(format!(
                "config.json: partial rotary embeddings (partial_rotary_factor {p})"
            )));
        }
        match c.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            None => {}
            Some(s) => {
                let num = |k: &str| {
                    s.get(k)
                        .and_then(|v| v.as_f64())
                        .map(|v| v as f32)
                        .ok_or_else(|| ModelError::Metadata(format!("config.json: rope_scaling.{k} is missing")))
                };
                match s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()) {
                    Some("llama3") => {
                        config.rope_freq_factors = Some(llama3_rope_factors(
                            head_dim,
                            base,
                            num("factor")?,
                            num("low_freq_factor")?,
                            num("high_freq_factor")?,
                            num("original_max_position_embeddings")?,
                        ))
                    }
                    Some("linear") => config.rope_linear = Some(num("factor")?).filter(|&f| f != 1.0),
                    Some("longrope" | "su") => {
                        let factors = |k: &str| -> Result<Vec<f32>, ModelError> {
                            s.get(k).and_then(|v| serde_json::from_value(v.clone()).ok()).ok_or_else(|| {
                                ModelError::Metadata(format!("config.json: rope_scaling.{k} is missing"))
                            })
                        };
                        let original = c.original_max_position_embeddings.ok_or_else(|| {
                            ModelError::Metadata("config.json: original_max_position_embeddings is missing".into())
                        })?;
                        let attn_factor = s.get("attention_factor").and_then(|v| v.as_f64()).map(|v| v as f32);
                        let (short, long) = (factors("short_factor")?, factors("long_factor")?);
                        config.long_rope =
                            Some(LongRope::new(short, long, original, attn_factor, head_dim, context).map_err(
                                |e| match e {
                                    ModelError::Metadata(m) => ModelError::Metadata(format!("config.json: {m}")),
                                    other => other,
                                },
                            )?);
                    }
                    Some("default") => {}
                    _ => return Err(ModelError::Unsupported(format!("config.json: rope_scaling {s}"))),
                }
            }
        }
        if let Some(q) = c.query_pre_attn_scalar.filter(|_| family.is_gemma()) {
            config.attn_scale = 1.0 / (q as f32).sqrt();
        }
        config.experts = match family {
            Family::Mixtral => Some(Experts {
                count: c.num_local_experts.unwrap_or(8),
                used: c.num_experts_per_tok.unwrap_or(2),
                ffn: c.intermediate_size,
                norm_top: true,
            }),
            Family::Qwen3Moe => {
                if c.decoder_sparse_step.unwrap_or(1) != 1 || c.mlp_only_layers.as_ref().is_some_and(|l| !l.is_empty())
                {
                    return Err(ModelError::Unsupported(
                        "config.json: dense layers among the experts (decoder_sparse_step, mlp_only_layers)".into(),
                    ));
                }
                let ffn = c
                    .moe_intermediate_size
                    .ok_or_else(|| ModelError::Metadata("config.json: moe_intermediate_size is missing".into()))?;
                Some(Experts {
                    count: c.num_experts.unwrap_or(128),
                    used: c.num_experts_per_tok.unwrap_or(8),
                    ffn,
                    norm_top: c.norm_topk_prob.unwrap_or(false),
                })
            }
            _ => None,
        };
        if let Some(e) = config.experts
            && (e.used == 0 || e.used > e.count)
        {
            return Err(ModelError::Metadata(format!("config.json: {} of {} experts used per token", e.used, e.count)));
        }
        if family == Family::Gemma2 {
            config.attn_softcap = c.attn_logit_softcapping.map(|v| v as f32);
            config.final_softcap = c.final_logit_softcapping.map(|v| v as f32);
        }
        if matches!(family, Family::Gemma2 | Family::Gemma3) {
            if let Some(types) = &c.layer_types {
                if types.len() != config.layers {
                    return Err(ModelError::Metadata(format!(
                        "config.json: layer_types has {} entries for {} layers",
                        types.len(),
                        config.layers
                    )));
                }
                config.windowed = types.iter().map(|t| t == "sliding_attention").collect();
            } else if let Some(n) = c.sliding_window_pattern.filter(|&n| n > 0) {
                config.windowed = (0..config.layers).map(|l| (l + 1) % n != 0).collect();
            }
            config.sliding_window = Some(c.sliding_window.unwrap_or(4096));
            if family == Family::Gemma3 {
                config.rope_base_local = Some(c.rope_local_base_freq.unwrap_or(10_000.0) as f32);
            }
        }
        Ok(config)
    }

    fn find(&self, gguf: &str) -> Option<(&SafeTensors, String)> {
        let name = hf_name(gguf, self.config.family)?;
        self.shards.iter().find(|s| s.has(&name)).map(|s| (s, name))
    }

    /// Tokenizer from `tokenizer.json`, and the chat template and special tokens from
    /// `tokenizer_config.json`.
    pub fn tokenizer(dir: &Path) -> Result<(BpeTokenizer, Option<String>, String, String), ModelError> {
        let tc: TokenizerConfig = read_json(&dir.join("tokenizer_config.json")).unwrap_or_default();
        let (bos, eos) = (token_text(&tc.bos_token), token_text(&tc.eos_token));
        let add_bos = tc.add_bos_token.unwrap_or(false);
        let tok =
            BpeTokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), eos.as_deref(), bos.as_deref(), add_bos)?;
        Ok((tok, tc.chat_template, bos.unwrap_or_default(), eos.unwrap_or_default()))
    }
}

impl HfModel {
    /// The `rows × cols` tensor `hf` (its Hugging Face name), as f32.
    fn matrix_named(&self, hf: &str, rows: usize, cols: usize, _p: Precision) -> Result<Matrix, ModelError> {
        let st =
            self.shards.iter().find(|s| s.has(hf)).ok_or_else(|| ModelError::Metadata(format!("no tensor {hf}")))?;
        if st.shape(hf) != Some(&[rows, cols][..]) {
            return Err(ModelError::Metadata(format!("{hf} has shape {:?}, expected [{rows}, {cols}]", st.shape(hf))));
        }
        let values = st.f32(hf).ok_or_else(|| ModelError::Metadata(format!("{hf} is not f32, f16 or bf16")))?;
        Ok(Matrix::from_f32(values, rows, cols))
    }
}

impl WeightSource for HfModel {
    fn matrix(&self, name: &str, rows: usize, cols: usize, p: Precision) -> Result<Matrix, ModelError> {
        let hf =
            hf_name(name, self.config.family).ok_or_else(|| ModelError::Metadata(format!("no tensor for {name}")))?;
        self.matrix_named(&hf, rows, cols, p)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let (st, hf) = self.find(name).ok_or_else(|| ModelError::Metadata(format!("no tensor for {name}")))?;
        let mut v = st.f32(&hf).ok_or_else(|| ModelError::Metadata(format!("{hf} is not f32, f16 or bf16")))?;
        let offset = self.config.family.hf_norm_offset();
        if offset != 0.0 && is_norm(name) {
            v.iter_mut().for_each(|w| *w += offset);
        }
        if v.len() != len {
            return Err(ModelError::Metadata(format!("{hf} has {} values, expected {len}", v.len())));
        }
        Ok(v)
    }

    fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn expert(&self, name: &str, e: usize, rows: usize, cols: usize, p: Precision) -> Result<Matrix, ModelError> {
        let hf = hf_expert_name(name, e, self.config.family)
            .ok_or_else(|| ModelError::Metadata(format!("no tensor for expert {e} of {name}")))?;
        self.matrix_named(&hf, rows, cols, p)
    }
}

/// llama.cpp's conversion interleaves each head's rows for its RoPE layout: GGUF row `2j + t` of
/// a head is Hugging Face row `t·d/2 + j`. Undo it for `heads` heads of `rows / heads` rows.
fn unpermute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let head_rows = w.len() / cols / heads;
    let half = head_rows / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let (from, to) = (h * head_rows + 2 * j + t, h * head_rows + t * half + j);
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// Write the GGUF model `g` as a Hugging Face folder in `dir` (f32 weights).
pub fn export(g: &GgufFile, dir: &Path) -> Result<(), ModelError> {
    let io = |e: std::io::Error| ModelError::Metadata(format!("{}: {e}", dir.display()));
    let c = LlamaConfig::from_gguf(g)?;
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tensors = Vec::new();
    if c.rope_freq_factors.is_some() {
        return Err(ModelError::Unsupported(
            "exporting RoPE frequency factors (their Hugging Face parameters are not in the GGUF)".into(),
        ));
    }
    for t in &g.tensors {
        // LongRoPE's factors go into config.json.
        if t.name.starts_with("rope_factors_") && c.long_rope.is_some() {
            continue;
        }
        if let (Some(experts), true) = (c.experts, t.name.ends_with("_exps.weight")) {
            let data = g.dequantize(&t.name)?;
            let shape = t.shape()[1..].to_vec();
            for (e, part) in data.chunks_exact(data.len() / experts.count).enumerate() {
                let name = hf_expert_name(&t.name, e, c.family)
                    .ok_or_else(|| ModelError::Unsupported(format!("exporting tensor `{}`", t.name)))?;
                tensors.push((name, shape.clone(), part.to_vec()));
            }
            continue;
        }
        let Some(name) = hf_name(&t.name, c.family) else {
            return Err(ModelError::Unsupported(format!("exporting tensor `{}`", t.name)));
        };
        let mut data = g.dequantize(&t.name)?;
        if is_norm(&t.name) {
            data.iter_mut().for_each(|w| *w -= c.family.hf_norm_offset());
        }
        let cols = t.dims[0] as usize;
        if c.rope_style == RopeStyle::Interleaved && t.name.ends_with(".attn_q.weight") {
            data = unpermute(&data, c.heads, cols);
        } else if c.rope_style == RopeStyle::Interleaved && t.name.ends_with(".attn_k.weight") {
            data = unpermute(&data, c.kv_heads, cols);
        } else if c.rope_style == RopeStyle::Interleaved
            && (t.name.ends_with(".attn_q.bias") || t.name.ends_with(".attn_k.bias"))
        {
            let heads = if t.name.contains("attn_q") { c.heads } else { c.kv_heads };
            data = unpermute(&data, heads, 1);
        }
        tensors.push((name, t.shape(), data));
    }
    write_f32(&dir.join("model.safetensors"), &tensors).map_err(io)?;
    let tokenizer = BpeTokenizer::from_gguf(g)?;
    let text = |key: &str| g.get_u64(key).ok().and_then(|id| tokenizer.token_text(id as u32)).map(str::to_string);
    let mut config = json!({
        "architectures": [c.family.hf_class()],
        "model_type": c.family.hf_model_type(),
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "num_hidden_layers": c.layers,
        "rms_norm_eps": c.eps,
        "rope_theta": c.rope_base,
        "max_position_embeddings": c.context_length,
        "vocab_size": c.vocab,
        "tie_word_embeddings": !g.has("output.weight"),
        "bos_token_id": g.get_u64("tokenizer.ggml.bos_token_id").ok(),
        "eos_token_id": g.get_u64("tokenizer.ggml.eos_token_id").ok(),
        // Written out: Phi-3's class defaults it to 32000, outside smaller vocabularies.
        "pad_token_id": g.get_u64("tokenizer.ggml.padding_token_id").ok(),
        "torch_dtype": "float32",
    });
    let fields = config.as_object_mut().expect("an object");
    if let Some(f) = c.rope_linear {
        fields.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": f}));
    }
    if let Some(l) = &c.long_rope {
        let scaling = json!({
            "type": "longrope",
            "short_factor": l.short,
            "long_factor": l.long,
            "attention_factor": l.attn_factor,
        });
        fields.insert("rope_scaling".into(), scaling);
        fields.insert("original_max_position_embeddings".into(), json!(l.original_context));
    }
    if c.family.is_gemma() {
        fields.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        // An integer in Hugging Face's configs (Transformers 5 refuses a float).
        fields.insert("query_pre_attn_scalar".into(), json!((1.0 / (c.attn_scale * c.attn_scale)).round() as u64));
    }
    if let Some(w) = c.sliding_window {
        let types: Vec<&str> =
            c.windowed.iter().map(|&w| if w { "sliding_attention" } else { "full_attention" }).collect();
        fields.insert("sliding_window".into(), json!(w));
        fields.insert("layer_types".into(), json!(types));
    }
    if let Some(b) = c.rope_base_local {
        fields.insert("rope_local_base_freq".into(), json!(b));
    }
    if let Some(e) = c.experts {
        let count = if c.family == Family::Mixtral { "num_local_experts" } else { "num_experts" };
        fields.insert(count.into(), json!(e.count));
        fields.insert("num_experts_per_tok".into(), json!(e.used));
        fields.insert("norm_topk_prob".into(), json!(e.norm_top));
        if c.family == Family::Mixtral {
            fields.insert("intermediate_size".into(), json!(e.ffn));
        } else {
            fields.insert("moe_intermediate_size".into(), json!(e.ffn));
        }
    }
    fields.insert("attn_logit_softcapping".into(), json!(c.attn_softcap));
    fields.insert("final_logit_softcapping".into(), json!(c.final_softcap));
    let write = |name: &str, v: String| std::fs::write(dir.join(name), v).map_err(io);
    write("config.json", serde_json::to_string_pretty(&config).expect("json"))?;
    write("tokenizer.json", tokenizer.to_json()?)?;
    let tc = json!({
        "chat_template": g.get_str("tokenizer.chat_template").ok(),
        "bos_token": text("tokenizer.ggml.bos_token_id"),
        "eos_token": text("tokenizer.ggml.eos_token_id"),
        "add_bos_token": false,
        "add_eos_token": false,
        "model_max_length": c.context_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    write("tokenizer_config.json", serde_json::to_string_pretty(&tc).expect("json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_rope_factors_follow_the_three_bands() {
        // Llama 3.1: head_dim 128, base 500000, factor 8, low 1, high 4, original context 8192.
        let f = llama3_rope_factors(128, 500_000.0, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0, "short wavelengths keep their frequency");
        assert_eq!(f[63], 8.0, "long wavelengths are slowed by the factor");
        // In between, the divisor rises monotonically from 1 to 8.
        assert!(f.windows(2).all(|w| w[1] >= w[0]));
        let mid: Vec<&f32> = f.iter().filter(|&&d| d > 1.0 && d < 8.0).collect();
        assert!(!mid.is_empty(), "some frequencies fall in the smooth band");
        // Check one smooth-band value by hand: i = 32.
        let freq = 500_000f32.powf(-64.0 / 128.0);
        let wavelen = 2.0 * std::f32::consts::PI / freq;
        assert!(wavelen > 2048.0 && wavelen < 8192.0);
        let smooth = (8192.0 / wavelen - 1.0) / 3.0;
        let want = freq / ((1.0 - smooth) * freq / 8.0 + smooth * freq);
        assert!((f[32] - want).abs() < 1e-5, "{} vs {want}", f[32]);
    }

    #[test]
    fn names_map_both_ways_we_need() {
        let llama = |n: &str| hf_name(n, Family::Llama);
        assert_eq!(llama("blk.3.attn_q.weight").as_deref(), Some("model.layers.3.self_attn.q_proj.weight"));
        assert_eq!(llama("blk.0.ffn_down.weight").as_deref(), Some("model.layers.0.mlp.down_proj.weight"));
        assert_eq!(llama("blk.0.attn_k.bias").as_deref(), Some("model.layers.0.self_attn.k_proj.bias"));
        assert_eq!(llama("blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.post_attention_layernorm.weight"));
        assert_eq!(llama("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(llama("rope_freqs.weight"), None);
        assert_eq!(llama("blk.0.post_ffw_norm.weight"), None, "Llama has no post-norms");
        // Gemma 2 and 3 name four norms per layer; the one after attention is Llama's name for
        // the one before the MLP.
        let gemma3 = |n: &str| hf_name(n, Family::Gemma3);
        assert_eq!(gemma3("blk.2.ffn_norm.weight").as_deref(), Some("model.layers.2.pre_feedforward_layernorm.weight"));
        assert_eq!(
            gemma3("blk.2.post_attention_norm.weight").as_deref(),
            Some("model.layers.2.post_attention_layernorm.weight")
        );
        assert_eq!(
            gemma3("blk.2.post_ffw_norm.weight").as_deref(),
            Some("model.layers.2.post_feedforward_layernorm.weight")
        );
        assert_eq!(gemma3("blk.1.attn_q_norm.weight").as_deref(), Some("model.layers.1.self_attn.q_norm.weight"));
    }

    #[test]
    fn phi3_configs_read_long_rope_and_refuse_partial_rotation() {
        let dir = std::env::temp_dir().join(format!("armature-phi3-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |extra: &str| {
            let config = format!(
                r#"{{"architectures": ["Phi3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
                "num_attention_heads": 4, "num_hidden_layers": 2, "rms_norm_eps": 1e-5, "vocab_size": 300,
                "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                "sliding_window": 262144{extra}}}"#
            );
            std::fs::write(dir.join("config.json"), config).unwrap();
            HfModel::read_config(&dir)
        };
        let factors = |n: usize, v: f32| format!("{:?}", vec![v; n]);
        let scaling = |n: usize| {
            format!(
                r#", "rope_scaling": {{"type": "longrope", "short_factor": {}, "long_factor": {}}}"#,
                factors(n, 1.0),
                factors(n, 4.0)
            )
        };
        let c = write(&scaling(8)).unwrap();
        let l = c.long_rope.as_ref().expect("LongRoPE");
        assert_eq!((l.short.len(), l.long[0], l.original_context), (8, 4.0, 4096));
        // Hugging Face's attention factor for 32 times the original context.
        let want = (1.0 + 32f32.ln() / 4096f32.ln()).sqrt();
        assert!((l.attn_factor - want).abs() < 1e-6, "{} vs {want}", l.attn_factor);
        assert_eq!(c.sliding_window, None, "Phi-3's window is ignored, as llama.cpp ignores it");
        // A served context of 4096 or less takes the short factors.
        let mut short = c.clone();
        short.context_length = 4096;
        assert_eq!(short.inv_freq(false)[1], c.inv_freq(false)[1] * 4.0);
        let err = write(&scaling(6)).unwrap_err().to_string();
        assert!(err.contains("short_factor has 6 factors for heads of 16"), "{err}");
        assert_eq!(err.matches("model metadata").count(), 1, "{err}");
        let err = write(r#", "partial_rotary_factor": 0.75"#).unwrap_err().to_string();
        assert!(err.contains("partial_rotary_factor 0.75"), "{err}");
        let phi3 = |n: &str| hf_name(n, Family::Phi3);
        assert_eq!(phi3("blk.1.attn_qkv.weight").as_deref(), Some("model.layers.1.self_attn.qkv_proj.weight"));
        assert_eq!(phi3("blk.1.ffn_up.weight").as_deref(), Some("model.layers.1.mlp.gate_up_proj.weight"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unpermute_undoes_llama_cpp_interleaving() {
        // One head of 4 rows (half = 2), 1 column: HF rows [a, b, c, d] are stored by llama.cpp
        // as [a, c, b, d] (pairs (j, j + half) side by side).
        assert_eq!(unpermute(&[0.0, 2.0, 1.0, 3.0], 1, 1), vec![0.0, 1.0, 2.0, 3.0]);
        // Two heads, two columns.
        let gguf = [0., 0., 2., 2., 1., 1., 3., 3., 4., 4., 6., 6., 5., 5., 7., 7.];
        assert_eq!(unpermute(&gguf, 2, 2), vec![0., 0., 1., 1., 2., 2., 3., 3., 4., 4., 5., 5., 6., 6., 7., 7.]);
    }
}
