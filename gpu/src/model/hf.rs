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
use crate::cpu::kernels::RopeStyle;
use crate::cpu::llama::{LlamaConfig, WeightSource, llama3_rope_factors};
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
    vocab_size: usize,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
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

/// The GGUF tensor name's Hugging Face spelling.
fn hf_name(gguf: &str) -> Option<String> {
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
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
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
        let arch = match c.architectures.first().map(String::as_str) {
            Some("LlamaForCausalLM") => "llama",
            Some("MistralForCausalLM") => "mistral",
            Some("Qwen2ForCausalLM") => "qwen2",
            other => {
                let named = other.map_or("none".to_string(), |a| format!("\"{a}\""));
                return Err(ModelError::Unsupported(format!(
                    "config.json: architectures {named} (LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM \
                     are)"
                )));
            }
        };
        let head_dim = c.hidden_size / c.num_attention_heads.max(1);
        let base = c.rope_theta.unwrap_or(10_000.0) as f32;
        let rope_freq_factors = match c.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            None => None,
            Some(s) if s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()) == Some("llama3") => {
                let num = |k: &str| {
                    s.get(k)
                        .and_then(|v| v.as_f64())
                        .map(|v| v as f32)
                        .ok_or_else(|| ModelError::Metadata(format!("rope_scaling.{k} is missing")))
                };
                Some(llama3_rope_factors(
                    head_dim,
                    base,
                    num("factor")?,
                    num("low_freq_factor")?,
                    num("high_freq_factor")?,
                    num("original_max_position_embeddings")?,
                ))
            }
            Some(other) => return Err(ModelError::Unsupported(format!("rope_scaling {other}"))),
        };
        let heads = c.num_attention_heads;
        if heads == 0 || !c.hidden_size.is_multiple_of(heads) {
            return Err(ModelError::Metadata(format!(
                "{} hidden units do not split into {heads} heads",
                c.hidden_size
            )));
        }
        let kv_heads = c.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(ModelError::Metadata(format!("{heads} heads do not group over {kv_heads} KV heads")));
        }
        Ok(LlamaConfig {
            arch: arch.into(),
            layers: c.num_hidden_layers,
            hidden: c.hidden_size,
            ffn: c.intermediate_size,
            heads,
            kv_heads,
            head_dim: c.hidden_size / heads,
            vocab: c.vocab_size,
            eps: c.rms_norm_eps as f32,
            rope_base: base,
            rope_style: RopeStyle::Halves,
            context_length: c.max_position_embeddings.unwrap_or(2048),
            rope_freq_factors,
        })
    }

    fn find(&self, gguf: &str) -> Option<(&SafeTensors, String)> {
        let name = hf_name(gguf)?;
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

impl WeightSource for HfModel {
    fn matrix(&self, name: &str, rows: usize, cols: usize, _precision: Precision) -> Result<Matrix, ModelError> {
        // The tied output projection is the embedding matrix; HF folders omit lm_head then.
        let (st, hf) = self.find(name).ok_or_else(|| ModelError::Metadata(format!("no tensor for {name}")))?;
        if st.shape(&hf) != Some(&[rows, cols][..]) {
            return Err(ModelError::Metadata(format!("{hf} has shape {:?}, expected [{rows}, {cols}]", st.shape(&hf))));
        }
        Ok(Matrix::from_f32(st.f32(&hf).expect("found above"), rows, cols))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let (st, hf) = self.find(name).ok_or_else(|| ModelError::Metadata(format!("no tensor for {name}")))?;
        let v = st.f32(&hf).expect("found above");
        if v.len() != len {
            return Err(ModelError::Metadata(format!("{hf} has {} values, expected {len}", v.len())));
        }
        Ok(v)
    }

    fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
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
        let Some(name) = hf_name(&t.name) else {
            return Err(ModelError::Unsupported(format!("exporting tensor `{}`", t.name)));
        };
        let mut data = g.dequantize(&t.name)?;
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
    let arch = match c.arch.as_str() {
        "qwen2" => "Qwen2ForCausalLM",
        "mistral" => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let tokenizer = BpeTokenizer::from_gguf(g)?;
    let text = |key: &str| g.get_u64(key).ok().and_then(|id| tokenizer.token_text(id as u32)).map(str::to_string);
    let config = json!({
        "architectures": [arch],
        "model_type": if c.arch == "llama" { "llama" } else { c.arch.as_str() },
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "num_hidden_layers": c.layers,
        "rms_norm_eps": c.eps,
        "rope_theta": c.rope_base,
        "max_position_embeddings": c.context_length,
        "vocab_size": c.vocab,
        "tie_word_embeddings": !g.has("output.weight"),
        "bos_token_id": g.get_u64("tokenizer.ggml.bos_token_id").ok(),
        "eos_token_id": g.get_u64("tokenizer.ggml.eos_token_id").ok(),
        "torch_dtype": "float32",
    });
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
        assert_eq!(hf_name("blk.3.attn_q.weight").as_deref(), Some("model.layers.3.self_attn.q_proj.weight"));
        assert_eq!(hf_name("blk.0.ffn_down.weight").as_deref(), Some("model.layers.0.mlp.down_proj.weight"));
        assert_eq!(hf_name("blk.0.attn_k.bias").as_deref(), Some("model.layers.0.self_attn.k_proj.bias"));
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
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
