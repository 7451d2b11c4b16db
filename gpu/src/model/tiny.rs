//! Tiny random-weight models for fast tests: a Llama (or Qwen2 with q/k/v biases, Qwen3 with q/k
//! norms, Gemma 1/2/3 with their norms, GeGLU, soft-caps and sliding windows, Mixtral and Qwen3-MoE
//! with four experts, two used a token) of two layers (six for
//! Gemma 3, whose sixth is its first global one) and 64 hidden units, with a byte-level BPE
//! tokenizer and a ChatML template, written as GGUF as llama.cpp's conversion writes each family
//! (and, through `hf::export`, as a Hugging Face folder). Seeded, so every run writes the same file.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::gguf::GgufValue;
use super::gguf_write::GgufWriter;
use super::quant::{GgmlType, quantize_q4_k, quantize_q6_k, quantize_q8_0};
use crate::chat::CHATML;
use crate::cpu::config::Family;

/// Which tiny model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TinyArch {
    Llama,
    /// Llama with Llama 3.1 RoPE frequency scaling (a `rope_freqs.weight` tensor, as llama.cpp writes it).
    Llama3,
    Qwen2,
    /// Heads of 32 dimensions (q is 128 wide for 64 hidden units), q/k RMSNorm.
    Qwen3,
    /// Scaled embeddings and GeGLU.
    Gemma,
    /// Gemma with post-norms, soft-capped scores and logits, and a window of 3 on even layers.
    Gemma2,
    /// Post-norms, q/k norms, windows on five layers of six with their own RoPE base, and linear
    /// RoPE scaling on the global one.
    Gemma3,
    /// Llama with 4 experts of 128 units, 2 used per token.
    Mixtral,
    /// Qwen3 with 4 experts of 32 units, 2 used per token.
    Qwen3Moe,
    /// Fused q/k/v and gate/up, an untied output, LongRoPE (an original context of 64, so the
    /// long factors apply), `<|end|>`, and a sliding window in its metadata that is ignored (as
    /// llama.cpp ignores Phi-3 mini 4K's).
    Phi3,
}

impl TinyArch {
    pub const ALL: [TinyArch; 10] = [
        TinyArch::Llama,
        TinyArch::Llama3,
        TinyArch::Qwen2,
        TinyArch::Qwen3,
        TinyArch::Gemma,
        TinyArch::Gemma2,
        TinyArch::Gemma3,
        TinyArch::Mixtral,
        TinyArch::Qwen3Moe,
        TinyArch::Phi3,
    ];

    fn family(self) -> Family {
        match self {
            TinyArch::Llama | TinyArch::Llama3 => Family::Llama,
            TinyArch::Qwen2 => Family::Qwen2,
            TinyArch::Qwen3 => Family::Qwen3,
            TinyArch::Gemma => Family::Gemma,
            TinyArch::Gemma2 => Family::Gemma2,
            TinyArch::Gemma3 => Family::Gemma3,
            TinyArch::Mixtral => Family::Mixtral,
            TinyArch::Qwen3Moe => Family::Qwen3Moe,
            TinyArch::Phi3 => Family::Phi3,
        }
    }

    /// Each expert's width, for the mixtures of experts of MLP width `ffn`.
    fn expert_ffn(self, ffn: usize) -> Option<usize> {
        match self {
            TinyArch::Mixtral => Some(ffn),
            TinyArch::Qwen3Moe => Some(ffn / 4),
            _ => None,
        }
    }

    /// The arch named `name` (its variant's name, any case).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| format!("{a:?}").eq_ignore_ascii_case(name))
    }

    /// Head size where it is not `HIDDEN / HEADS`.
    fn head_dim(self) -> Option<usize> {
        matches!(self, TinyArch::Qwen3 | TinyArch::Gemma2 | TinyArch::Gemma3 | TinyArch::Qwen3Moe).then_some(32)
    }
}

const HIDDEN: usize = 64;
const FFN: usize = 128;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
const EXPERTS: usize = 4;
/// The tiny Phi-3's LongRoPE original context (its served one is 512).
const PHI3_ORIGINAL_CONTEXT: usize = 64;
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 8] =
    [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s")];

/// Write the tiny model as GGUF at `path`.
pub fn write_gguf(path: &Path, arch: TinyArch, seed: u64) -> std::io::Result<()> {
    write_gguf_sized(path, arch, seed, TinySize::default())
}

/// The sizes of a generated model (the tests' tiny ones by default; benchmarks ask for more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TinySize {
    pub hidden: usize,
    /// The MLP's width; a mixture's experts are each this wide (Qwen3-MoE's a quarter of it).
    pub ffn: usize,
    /// Layers (Gemma 3's tiny default is six, so that its sixth is global).
    pub layers: Option<usize>,
    /// How the weight matrices are stored.
    pub weights: TinyWeights,
}

impl Default for TinySize {
    fn default() -> Self {
        Self { hidden: HIDDEN, ffn: FFN, layers: None, weights: TinyWeights::F32 }
    }
}

/// How a generated model's weight matrices are stored (norms stay f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TinyWeights {
    #[default]
    F32,
    /// The k-quants as llama.cpp's Q4_K_M mixes them: Q4_K, with v, the MLP's down projections
    /// and the embeddings in Q6_K; and, as llama.cpp does, Q8_0 for matrices whose rows are not
    /// whole 256-value super-blocks.
    KQuants,
}

/// A generated model of `arch` at `size`, as GGUF at `path`.
pub fn write_gguf_sized(path: &Path, arch: TinyArch, seed: u64, size: TinySize) -> std::io::Result<()> {
    let (hidden, ffn) = (size.hidden, size.ffn);
    let quantized = size.weights == TinyWeights::KQuants;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(super::bpe::byte_chars().into_iter().map(String::from));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    let mut types = vec![3i32; SPECIALS.len()];
    types.resize(tokens.len(), 1);
    if arch == TinyArch::Phi3 {
        // Phi-3's end of turn (llama.cpp's loader looks for it in a `phi3` vocabulary).
        tokens.push("<|end|>".into());
        types.push(3);
    }
    let vocab = tokens.len();
    let name = arch.family().gguf_name();
    let family = arch.family();
    let layers = size.layers.unwrap_or(if arch == TinyArch::Gemma3 { 6 } else { LAYERS });
    let hd = arch.head_dim().unwrap_or(hidden / HEADS);
    let qw = HEADS * hd;
    let strings = |v: Vec<String>| GgufValue::Array(v.into_iter().map(GgufValue::String).collect());
    let mut w = GgufWriter::default();
    w.meta("general.architecture", GgufValue::String(name.into()))
        .meta("general.name", GgufValue::String(format!("tiny-{name}")))
        .meta(&format!("{name}.block_count"), GgufValue::U32(layers as u32))
        .meta(&format!("{name}.context_length"), GgufValue::U32(512))
        .meta(&format!("{name}.embedding_length"), GgufValue::U32(hidden as u32))
        .meta(&format!("{name}.feed_forward_length"), GgufValue::U32(ffn as u32))
        .meta(&format!("{name}.attention.head_count"), GgufValue::U32(HEADS as u32))
        .meta(&format!("{name}.attention.head_count_kv"), GgufValue::U32(KV_HEADS as u32))
        .meta(&format!("{name}.rope.freq_base"), GgufValue::F32(if arch == TinyArch::Gemma3 { 1e6 } else { 1e4 }))
        .meta(&format!("{name}.attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5))
        .meta("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", GgufValue::String("gpt-2".into()))
        .meta("tokenizer.ggml.tokens", strings(tokens))
        .meta("tokenizer.ggml.token_type", GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()))
        .meta("tokenizer.ggml.merges", strings(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect()))
        .meta("tokenizer.ggml.bos_token_id", GgufValue::U32(0))
        .meta("tokenizer.ggml.eos_token_id", GgufValue::U32(2));
    // The Phi-3 carries no template, so that it gets its family's own.
    if arch != TinyArch::Phi3 {
        w.meta("tokenizer.chat_template", GgufValue::String(CHATML.into()));
    }
    if let Some(hd) = arch.head_dim() {
        w.meta(&format!("{name}.attention.key_length"), GgufValue::U32(hd as u32))
            .meta(&format!("{name}.attention.value_length"), GgufValue::U32(hd as u32));
    }
    match arch {
        TinyArch::Gemma2 => {
            w.meta("gemma2.attention.sliding_window", GgufValue::U32(3))
                .meta("gemma2.attn_logit_softcapping", GgufValue::F32(2.0))
                .meta("gemma2.final_logit_softcapping", GgufValue::F32(3.0));
        }
        TinyArch::Gemma3 => {
            w.meta("gemma3.attention.sliding_window", GgufValue::U32(3))
                .meta("gemma3.rope.scaling.type", GgufValue::String("linear".into()))
                .meta("gemma3.rope.scaling.factor", GgufValue::F32(4.0));
        }
        TinyArch::Mixtral => {
            w.meta("llama.expert_count", GgufValue::U32(EXPERTS as u32))
                .meta("llama.expert_used_count", GgufValue::U32(2));
        }
        TinyArch::Qwen3Moe => {
            w.meta("qwen3moe.expert_count", GgufValue::U32(EXPERTS as u32))
                .meta("qwen3moe.expert_used_count", GgufValue::U32(2))
                .meta("qwen3moe.expert_feed_forward_length", GgufValue::U32((ffn / 4) as u32));
        }
        TinyArch::Phi3 => {
            let factor = crate::cpu::config::LongRope::default_attn_factor(512, PHI3_ORIGINAL_CONTEXT);
            // Phi-3 mini 4K's window, which llama.cpp and we ignore.
            w.meta("phi3.rope.scaling.original_context_length", GgufValue::U32(PHI3_ORIGINAL_CONTEXT as u32))
                .meta("phi3.rope.scaling.attn_factor", GgufValue::F32(factor))
                .meta("phi3.attention.sliding_window", GgufValue::U32(5));
        }
        _ => {}
    }
    let mut rand =
        |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect() };
    let kvw = KV_HEADS * hd;
    // A weight matrix: f32, or the k-quant `wide` (Q6_K) or not (Q4_K) picks.
    let matrix = |w: &mut GgufWriter, name: &str, shape: &[usize], values: Vec<f32>, wide: bool| {
        let cols = shape[shape.len() - 1];
        match quantized {
            false => w.tensor(name, shape, values),
            true if !cols.is_multiple_of(256) => w.raw_tensor(name, shape, GgmlType::Q8_0, quantize_q8_0(&values)),
            true if wide => w.raw_tensor(name, shape, GgmlType::Q6_K, quantize_q6_k(&values)),
            true => w.raw_tensor(name, shape, GgmlType::Q4_K, quantize_q4_k(&values)),
        };
    };
    matrix(&mut w, "token_embd.weight", &[vocab, hidden], rand(vocab * hidden, 0.5), true);
    for l in 0..layers {
        let p = format!("blk.{l}");
        let gain = |rand: &mut dyn FnMut(usize, f32) -> Vec<f32>, len: usize| -> Vec<f32> {
            rand(len, 0.2).into_iter().map(|v| 1.0 + v).collect()
        };
        w.tensor(&format!("{p}.attn_norm.weight"), &[hidden], gain(&mut rand, hidden));
        if arch == TinyArch::Phi3 {
            let rows = qw + 2 * kvw;
            matrix(&mut w, &format!("{p}.attn_qkv.weight"), &[rows, hidden], rand(rows * hidden, 0.2), false);
        } else {
            matrix(&mut w, &format!("{p}.attn_q.weight"), &[qw, hidden], rand(qw * hidden, 0.2), false);
            matrix(&mut w, &format!("{p}.attn_k.weight"), &[kvw, hidden], rand(kvw * hidden, 0.2), false);
            matrix(&mut w, &format!("{p}.attn_v.weight"), &[kvw, hidden], rand(kvw * hidden, 0.2), true);
        }
        if arch == TinyArch::Qwen2 {
            w.tensor(&format!("{p}.attn_q.bias"), &[qw], rand(qw, 0.1));
            w.tensor(&format!("{p}.attn_k.bias"), &[kvw], rand(kvw, 0.1));
            w.tensor(&format!("{p}.attn_v.bias"), &[kvw], rand(kvw, 0.1));
        }
        matrix(&mut w, &format!("{p}.attn_output.weight"), &[hidden, qw], rand(hidden * qw, 0.2), false);
        w.tensor(&format!("{p}.ffn_norm.weight"), &[hidden], gain(&mut rand, hidden));
        if let Some(f) = arch.expert_ffn(ffn) {
            // The router, and the experts stacked as llama.cpp stores them.
            w.tensor(&format!("{p}.ffn_gate_inp.weight"), &[EXPERTS, hidden], rand(EXPERTS * hidden, 0.5));
            let (gate, up, down) =
                (rand(EXPERTS * f * hidden, 0.2), rand(EXPERTS * f * hidden, 0.2), rand(EXPERTS * hidden * f, 0.2));
            matrix(&mut w, &format!("{p}.ffn_gate_exps.weight"), &[EXPERTS, f, hidden], gate, false);
            matrix(&mut w, &format!("{p}.ffn_up_exps.weight"), &[EXPERTS, f, hidden], up, false);
            matrix(&mut w, &format!("{p}.ffn_down_exps.weight"), &[EXPERTS, hidden, f], down, true);
        } else if arch == TinyArch::Phi3 {
            // Gate and up fused, gate first.
            matrix(&mut w, &format!("{p}.ffn_up.weight"), &[2 * ffn, hidden], rand(2 * ffn * hidden, 0.2), false);
            matrix(&mut w, &format!("{p}.ffn_down.weight"), &[hidden, ffn], rand(hidden * ffn, 0.2), true);
        } else {
            matrix(&mut w, &format!("{p}.ffn_gate.weight"), &[ffn, hidden], rand(ffn * hidden, 0.2), false);
            matrix(&mut w, &format!("{p}.ffn_up.weight"), &[ffn, hidden], rand(ffn * hidden, 0.2), false);
            matrix(&mut w, &format!("{p}.ffn_down.weight"), &[hidden, ffn], rand(hidden * ffn, 0.2), true);
        }
        // The other families' tensors come after Llama's, so that Llama's weights stay the same.
        if matches!(family, Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3) {
            w.tensor(&format!("{p}.attn_q_norm.weight"), &[hd], gain(&mut rand, hd));
            w.tensor(&format!("{p}.attn_k_norm.weight"), &[hd], gain(&mut rand, hd));
        }
        if matches!(family, Family::Gemma2 | Family::Gemma3) {
            w.tensor(&format!("{p}.post_attention_norm.weight"), &[hidden], gain(&mut rand, hidden));
            w.tensor(&format!("{p}.post_ffw_norm.weight"), &[hidden], gain(&mut rand, hidden));
        }
    }
    w.tensor("output_norm.weight", &[hidden], vec![1.0; hidden]);
    if arch == TinyArch::Llama3 {
        // A short original context so that every band of the scaling occurs in 16 frequencies.
        let factors = crate::cpu::config::llama3_rope_factors(hidden / HEADS, 10_000.0, 8.0, 1.0, 4.0, 64.0);
        w.tensor("rope_freqs.weight", &[factors.len()], factors);
    }
    if arch == TinyArch::Phi3 {
        // LongRoPE's divisors: near 1 for short contexts, growing towards long wavelengths for long.
        let half = hd / 2;
        w.tensor("rope_factors_short.weight", &[half], (0..half).map(|i| 1.0 + 0.05 * i as f32).collect());
        w.tensor("rope_factors_long.weight", &[half], (0..half).map(|i| 1.0 + 0.9 * i as f32).collect());
    }
    if matches!(arch, TinyArch::Qwen2 | TinyArch::Phi3) {
        // Untied output projection, to exercise that path too.
        matrix(&mut w, "output.weight", &[vocab, hidden], rand(vocab * hidden, 0.5), true);
    }
    w.write(path)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cpu::{ModelExecutor, Precision};
    use crate::engine::{Engine, EngineLimits};
    use crate::model::bpe::BpeTokenizer;
    use crate::model::gguf::GgufFile;
    use crate::tokenizer::Tokenizer;

    /// The tiny model in a folder of its own for `test` (tests run at once, and each removes its folder).
    fn tiny(arch: TinyArch, test: &str) -> (GgufFile, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("armature-tiny-{test}-{arch:?}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.gguf");
        write_gguf(&path, arch, 7).unwrap();
        (GgufFile::open(&path).unwrap(), dir)
    }

    #[test]
    fn tiny_models_load_tokenize_and_generate_consistently() {
        for arch in [TinyArch::Llama, TinyArch::Qwen2] {
            let (g, dir) = tiny(arch, "generate");
            let tok = BpeTokenizer::from_gguf(&g).unwrap();
            let ids = tok.encode("<|im_start|>the thin sea");
            assert_eq!(ids[0], 1, "special token");
            assert!(ids.len() < 1 + "the thin sea".len(), "merges apply: {ids:?}");
            assert_eq!(tok.decode(&ids), "the thin sea");
            // Exact and fast precision (the same F32 weights; fast keeps K and V as f16) agree to
            // f16 precision, and on the top token.
            let mut exact = ModelExecutor::with_precision(&g, "t", 16, 4, Precision::Exact).unwrap();
            let mut fast = ModelExecutor::from_gguf(&g, "t", 16, 4).unwrap();
            let table: Vec<crate::pool::BlockId> = (0..16).map(crate::pool::BlockId).collect();
            let view = crate::executor::SequenceView::whole_prompt(&ids, &table);
            use crate::executor::Executor;
            let (e, f) = (exact.forward(&[view]).unwrap(), fast.forward(&[view]).unwrap());
            let (e, f) = (e[0].as_ref().unwrap(), f[0].as_ref().unwrap());
            let scale = e.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(e.iter().zip(f).all(|(a, b)| (a - b).abs() <= 1e-2 * scale), "{e:?} vs {f:?}");
            assert_eq!(crate::sampling::argmax(e), crate::sampling::argmax(f));
            // Through the engine, with chunked prefill (4 tokens a step) against one big step.
            let run = |budget: usize| {
                let exec = ModelExecutor::from_gguf(&g, "t", 16, 4).unwrap();
                let limits = EngineLimits {
                    max_batch: 2,
                    max_queue: 2,
                    context_length: 512,
                    block_size: 4,
                    kv_blocks: 16,
                    max_batch_tokens: budget,
                };
                let mut e = Engine::new(Box::new(exec), Arc::new(BpeTokenizer::from_gguf(&g).unwrap()), limits);
                e.submit(runtime::request::GenerateRequest {
                    id: runtime::ids::RequestId("t".into()),
                    tag: None,
                    trace: None,
                    prompt_tokens: ids.clone(),
                    sampling: runtime::request::SamplingParams {
                        max_tokens: 10,
                        ignore_eos: true,
                        ..Default::default()
                    },
                });
                let mut text = String::new();
                while e.has_work() {
                    for (_, ev) in e.step().unwrap() {
                        if let runtime::request::StreamEvent::Delta { text: t, .. } = ev {
                            text.push_str(&t);
                        }
                    }
                }
                text
            };
            assert_eq!(run(4), run(512), "{arch:?}");
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn a_mixture_of_experts_batch_runs_each_expert_once_a_layer_and_equals_its_sequences_alone() {
        for arch in [TinyArch::Mixtral, TinyArch::Qwen3Moe] {
            let (g, dir) = tiny(arch, "moe-batch");
            let tok = BpeTokenizer::from_gguf(&g).unwrap();
            let mut exec = ModelExecutor::with_precision(&g, "t", 64, 4, Precision::Exact).unwrap();
            let experts = exec.config().experts.unwrap();
            let layers = exec.config().layers;
            // 16 prompts of 3 to 6 tokens, each in blocks of its own.
            let prompts: Vec<Vec<u32>> =
                (0..16).map(|i| tok.encode(&format!("the sea {i} in{}", "n".repeat(i % 4)))).collect();
            let tables: Vec<Vec<crate::pool::BlockId>> =
                (0..16).map(|i| (4 * i..4 * i + 4).map(crate::pool::BlockId).collect()).collect();
            let views: Vec<_> =
                prompts.iter().zip(&tables).map(|(p, t)| crate::executor::SequenceView::whole_prompt(p, t)).collect();
            use crate::executor::Executor;
            let before = exec.expert_passes();
            let together = exec.forward(&views).unwrap();
            let passes = exec.expert_passes() - before;
            let rows: usize = prompts.iter().map(Vec::len).sum();
            assert!(rows * experts.used > layers * experts.count, "more routings than experts: {rows} rows");
            assert!(passes <= (layers * experts.count) as u64, "{arch:?}: {passes} expert passes in one step");
            assert!(passes >= layers as u64);
            println!(
                "{arch:?}: {rows} rows, {} routings a layer, {passes} expert passes over {layers} layers",
                rows * experts.used
            );
            for (i, view) in views.iter().enumerate() {
                let alone = exec.forward(std::slice::from_ref(view)).unwrap().remove(0).unwrap();
                let batched = together[i].as_ref().unwrap();
                let d = alone.iter().zip(batched).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(d < 1e-4, "{arch:?} sequence {i}: {d} between the batch and alone");
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The CPU executor with the trait's default `with_host_threads`: draws run one by one.
    struct SerialDraws(ModelExecutor);

    impl crate::executor::Executor for SerialDraws {
        fn info(&self) -> crate::executor::ModelInfo {
            self.0.info()
        }

        fn forward(
            &mut self,
            batch: &[crate::executor::SequenceView<'_>],
        ) -> Result<Vec<Option<Vec<f32>>>, crate::executor::ExecutorError> {
            self.0.forward(batch)
        }
    }

    #[test]
    fn a_batch_drawn_over_the_compute_threads_samples_what_each_sequence_samples_alone() {
        let (g, dir) = tiny(TinyArch::Llama, "batch");
        let tok = Arc::new(BpeTokenizer::from_gguf(&g).unwrap());
        let request = |i: u64| runtime::request::GenerateRequest {
            id: runtime::ids::RequestId(format!("r{i}")),
            tag: None,
            trace: None,
            prompt_tokens: tok.encode(&format!("<|im_start|>the sea {i}")),
            sampling: runtime::request::SamplingParams {
                max_tokens: 12,
                ignore_eos: true,
                temperature: 1.3,
                top_p: if i.is_multiple_of(2) { 0.95 } else { 1.0 },
                top_k: if i == 3 { 5 } else { 0 },
                logprobs: (i == 1).then_some(2),
                seed: 100 + i,
                ..Default::default()
            },
        };
        // Every token of each request, with its log probabilities when asked for; `serial` draws
        // one sequence after another (the executor's default `with_host_threads`).
        let run_with = |ids: &[u64], serial: bool| {
            let exec = ModelExecutor::from_gguf(&g, "t", 64, 4).unwrap();
            let exec: Box<dyn crate::executor::Executor> =
                if serial { Box::new(SerialDraws(exec)) } else { Box::new(exec) };
            let limits = EngineLimits {
                max_batch: 8,
                max_queue: 8,
                context_length: 512,
                block_size: 4,
                kv_blocks: 64,
                max_batch_tokens: 512,
            };
            let mut e = Engine::new(exec, tok.clone(), limits);
            for &i in ids {
                e.submit(request(i));
            }
            let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            while e.has_work() {
                for (id, ev) in e.step().unwrap() {
                    if let runtime::request::StreamEvent::Delta { text, ids, logprobs, .. } = ev {
                        out.entry(id.0).or_default().push(format!("{text:?} {ids:?} {logprobs:?}"));
                    }
                }
            }
            out
        };
        let run = |ids: &[u64]| run_with(ids, false);
        let together = run(&[0, 1, 2, 3, 4, 5]);
        assert_eq!(together.len(), 6);
        assert_eq!(together, run_with(&[0, 1, 2, 3, 4, 5], true), "drawn in parallel and one after another");
        for i in 0..6 {
            let alone = run(&[i]);
            assert_eq!(alone[&format!("r{i}")], together[&format!("r{i}")], "request {i}");
        }
        // The draws are random, not one token over and over.
        let distinct: std::collections::BTreeSet<&Vec<String>> = together.values().collect();
        assert_eq!(distinct.len(), 6);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use crate::model::{KvBudget, LoadedModel};

    #[test]
    fn every_family_passes_the_check_for_cuda_workers() {
        use runtime::config::Device;
        let dir = std::env::temp_dir().join(format!("armature-tiny-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for arch in TinyArch::ALL {
            let path = dir.join(format!("{arch:?}.gguf"));
            write_gguf(&path, arch, 1).unwrap();
            let section = runtime::config::ModelSection {
                source: runtime::config::ModelSource::Path(path),
                ..Default::default()
            };
            crate::model::check(&section, &[Device::Cpu, Device::Cuda(1)]).unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn kv_budget_in_bytes_becomes_blocks() {
        let dir = std::env::temp_dir().join(format!("armature-tiny-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.gguf");
        write_gguf(&path, TinyArch::Llama, 3).unwrap();
        let section = runtime::config::ModelSection {
            source: runtime::config::ModelSource::Path(path.clone()),
            ..Default::default()
        };
        // 2 layers × K and V × 4 positions × 2 KV heads × 16 dims × 2 bytes (f16) = 1024 bytes a block.
        let m = LoadedModel::load(&section, runtime::config::Device::Cpu, KvBudget::Bytes(10_000), 4).unwrap();
        assert_eq!(m.kv_blocks, 9);
        assert_eq!(
            LoadedModel::load(&section, runtime::config::Device::Cpu, KvBudget::Blocks(7), 4).unwrap().kv_blocks,
            7
        );
        let err = LoadedModel::load(&section, runtime::config::Device::Cpu, KvBudget::Bytes(1000), 4)
            .err()
            .expect("too small");
        assert!(err.to_string().contains("one block takes 1024 bytes"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
