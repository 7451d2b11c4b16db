//! Loading what `[model]` names: the executor a worker runs and the tokenizer a gateway uses.

pub mod bpe;
pub mod fetch;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod quant;
pub mod safetensors;
pub mod spm;
pub mod tiny;

use std::path::Path;
use std::sync::Arc;

use runtime::config::{Device, ModelSection, ModelSource, SamplingDefaults};

use crate::chat::{CHATML, ChatMessage, ChatTemplate};
use crate::cpu::Precision;
use crate::executor::{Executor, TestExecutor, TestTokenizer};
use crate::tokenizer::Tokenizer;

const TEST_CONTEXT_LENGTH: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An architecture, tensor type or tokenizer this build cannot run, named.
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error("chat template: {0}")]
    Template(String),
    #[error("fetching the default model: {0}")]
    Fetch(String),
    #[error("starting the compute threads: {0}")]
    Threads(#[source] std::io::Error),
    /// The device named cannot run the model (not built with CUDA, no driver, no such device).
    #[error("device \"{device}\": {reason}")]
    Device { device: Device, reason: String },
}

/// What a gateway needs of a model: its id, tokenizer, chat format and context length.
#[derive(Clone)]
pub struct ModelFrontend {
    pub name: String,
    pub tokenizer: Arc<dyn Tokenizer>,
    pub chat: Arc<ChatTemplate>,
    pub context_length: u32,
    pub default_max_tokens: u32,
    /// The byte length of the vocabulary's longest token: a text of `n` bytes is at least
    /// `n / longest_token` tokens, which sizes up a prompt before it is tokenized.
    pub longest_token: usize,
    /// What a request that leaves a sampling field out gets: `[model.sampling]`, then a Hugging
    /// Face folder's `generation_config.json`.
    pub sampling: SamplingDefaults,
    /// Compiles requests' constraints, so that one that cannot compile is refused before it is
    /// placed (built on first use).
    pub grammars: Arc<crate::constraint::Grammars>,
    /// How tool calls are read from the output (`model.tool_parser`, else from the template).
    pub tool_parser: runtime::config::ToolParser,
}

/// The sampling fields of a Hugging Face folder's `generation_config.json`, if it has one.
pub fn generation_config(dir: &Path) -> SamplingDefaults {
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return SamplingDefaults::default();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        tracing::warn!(dir = %dir.display(), "generation_config.json does not parse; its sampling defaults are ignored");
        return SamplingDefaults::default();
    };
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).map(|x| x as f32);
    SamplingDefaults {
        temperature: f("temperature"),
        top_p: f("top_p"),
        top_k: v.get("top_k").and_then(serde_json::Value::as_u64).map(|k| k as u32),
        min_p: f("min_p"),
        repetition_penalty: f("repetition_penalty"),
    }
}

/// What a gateway and a worker must agree on to serve each other: the served model name and the
/// whole vocabulary (every token's bytes, the end tokens, the prompt's first token). A gateway
/// places requests only on workers that announce the same identity.
pub fn identity(name: &str, tokenizer: &dyn Tokenizer) -> u64 {
    use std::hash::Hasher as _;
    let mut h = twox_hash::XxHash3_64::new();
    h.write(name.as_bytes());
    h.write(&(tokenizer.vocab_size() as u64).to_le_bytes());
    for id in 0..tokenizer.vocab_size() as u32 {
        let bytes = tokenizer.token_bytes(id);
        h.write(&(bytes.len() as u32).to_le_bytes());
        h.write(bytes);
    }
    for eos in tokenizer.eos_tokens() {
        h.write(&eos.to_le_bytes());
    }
    h.write(&tokenizer.prompt_bos().map_or(u64::MAX, u64::from).to_le_bytes());
    h.finish()
}

impl ModelFrontend {
    /// This model's `identity`.
    pub fn identity(&self) -> u64 {
        identity(&self.name, &*self.tokenizer)
    }
}

/// The byte length of `tokenizer`'s longest token (at least 1).
pub fn longest_token(tokenizer: &dyn Tokenizer) -> usize {
    (0..tokenizer.vocab_size() as u32).map(|id| tokenizer.token_bytes(id).len()).max().unwrap_or(1).max(1)
}

/// The tool-call format a chat template teaches its model: Hermes (`<tool_call>`) unless it
/// speaks Mistral's `[TOOL_CALLS]` or Llama 3's `<|python_tag|>`.
pub fn tool_parser_of(template: &str) -> runtime::config::ToolParser {
    use runtime::config::ToolParser;
    if template.contains("[TOOL_CALLS]") {
        ToolParser::Mistral
    } else if template.contains("<|python_tag|>") || template.contains("ipython") {
        ToolParser::Llama3
    } else {
        ToolParser::Hermes
    }
}

impl ModelFrontend {
    pub fn load(section: &ModelSection, name: String) -> Result<Self, ModelError> {
        match &section.source {
            ModelSource::Test => Ok(Self {
                name,
                sampling: section.sampling,
                longest_token: longest_token(&TestTokenizer::default()),
                grammars: Arc::new(crate::constraint::Grammars::new(Arc::new(TestTokenizer::default()))),
                tool_parser: section.tool_parser.unwrap_or(runtime::config::ToolParser::Hermes),
                tokenizer: Arc::new(TestTokenizer::default()),
                chat: Arc::new(ChatTemplate::new(CHATML, "", "<|im_end|>").map_err(ModelError::Template)?),
                context_length: section.context_length.unwrap_or(TEST_CONTEXT_LENGTH),
                default_max_tokens: section.default_max_tokens,
            }),
            ModelSource::Path(dir) if dir.is_dir() => {
                let (tok, template, bos, eos) = hf::HfModel::tokenizer(dir)?;
                let chat = ChatTemplate::new(template.as_deref().unwrap_or(CHATML), &bos, &eos)
                    .map_err(ModelError::Template)?;
                let native = hf::HfModel::open(dir)?.config.context_length as u32;
                let tok: Arc<dyn Tokenizer> = Arc::new(tok);
                let tool_parser = section.tool_parser.unwrap_or_else(|| tool_parser_of(chat.source()));
                Ok(Self {
                    name,
                    tool_parser,
                    sampling: section.sampling.or(generation_config(dir)),
                    longest_token: longest_token(&*tok),
                    grammars: Arc::new(crate::constraint::Grammars::new(tok.clone())),
                    tokenizer: tok,
                    chat: Arc::new(chat),
                    context_length: section.context_length.map_or(native, |c| c.min(native)),
                    default_max_tokens: section.default_max_tokens,
                })
            }
            _ => {
                let mut frontend =
                    Self::from_gguf(&open_source(section)?, name, section.context_length, section.default_max_tokens)?;
                frontend.sampling = section.sampling;
                if let Some(p) = section.tool_parser {
                    frontend.tool_parser = p;
                }
                Ok(frontend)
            }
        }
    }

    /// Tokenizer and chat template from a GGUF file's metadata.
    pub fn from_gguf(
        g: &gguf::GgufFile,
        name: String,
        context_length: Option<u32>,
        default_max_tokens: u32,
    ) -> Result<Self, ModelError> {
        let tokenizer = tokenizer_from_gguf(g)?;
        let text = |key: &str| -> String {
            g.get_u64(key).ok().and_then(|id| tokenizer.token_text(id as u32)).unwrap_or("").to_string()
        };
        let (bos, eos) = (text("tokenizer.ggml.bos_token_id"), text("tokenizer.ggml.eos_token_id"));
        let arch = g.get_str("general.architecture").ok();
        // A file without a template gets its family's format where the family has a fixed one.
        let family = arch.and_then(crate::cpu::config::Family::from_gguf_name);
        let fallback = match family {
            Some(f) if f.is_gemma() => crate::chat::GEMMA,
            Some(crate::cpu::config::Family::Phi3) => crate::chat::PHI3,
            _ => CHATML,
        };
        let template = g.get_str("tokenizer.chat_template").unwrap_or(fallback);
        let chat = ChatTemplate::new(template, &bos, &eos).map_err(ModelError::Template)?;
        let native = arch.and_then(|a| g.get_u64(&format!("{a}.context_length")).ok());
        Ok(Self {
            name,
            sampling: SamplingDefaults::default(),
            longest_token: longest_token(&*tokenizer),
            grammars: Arc::new(crate::constraint::Grammars::new(tokenizer.clone())),
            tool_parser: tool_parser_of(chat.source()),
            tokenizer,
            chat: Arc::new(chat),
            context_length: match (context_length, native) {
                (Some(c), Some(n)) => c.min(n as u32),
                (Some(c), None) => c,
                (None, n) => n.map_or(2048, |n| n as u32),
            },
            default_max_tokens,
        })
    }

    /// The prompt text for a chat, with the assistant's turn opened.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, String> {
        self.chat.render(messages, true)
    }
}

/// What a worker runs.
pub struct LoadedModel {
    pub executor: Box<dyn Executor>,
    pub tokenizer: Arc<dyn Tokenizer>,
    /// Blocks in the KV cache the executor allocated.
    pub kv_blocks: usize,
}

/// How big a worker's KV cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvBudget {
    Blocks(usize),
    /// As many blocks as fit in this many bytes (K and V, all layers, f32).
    Bytes(u64),
}

/// The test executor has no KV cache; it counts this many bytes per token of budget.
const TEST_KV_BYTES_PER_TOKEN: u64 = 1024;

impl KvBudget {
    fn blocks(self, bytes_per_block: u64) -> Result<usize, ModelError> {
        match self {
            KvBudget::Blocks(n) => Ok(n),
            KvBudget::Bytes(b) if b >= bytes_per_block => Ok((b / bytes_per_block) as usize),
            KvBudget::Bytes(b) => Err(ModelError::Metadata(format!(
                "a KV budget of {b} bytes holds no block: one block takes {bytes_per_block} bytes"
            ))),
        }
    }
}

impl LoadedModel {
    /// The executor and tokenizer for `section` on `device` (`cpu` or `cuda:N`), with a KV cache
    /// of the given budget in blocks of `block_size` positions.
    pub fn load(
        section: &ModelSection,
        device: Device,
        budget: KvBudget,
        block_size: usize,
    ) -> Result<Self, ModelError> {
        if device != Device::Cpu && section.source != ModelSource::Test {
            return cuda_model(section, device, budget, block_size);
        }
        let limit = |exec: &mut crate::cpu::ModelExecutor| {
            if let Some(limit) = section.context_length {
                exec.limit_context(limit as usize);
            }
        };
        match &section.source {
            ModelSource::Test => {
                let kv_blocks = budget.blocks(TEST_KV_BYTES_PER_TOKEN * block_size as u64)?;
                let exec = TestExecutor::new(
                    section.test.step_delay.get(),
                    section.context_length.unwrap_or(TEST_CONTEXT_LENGTH),
                )
                .with_kv(kv_blocks, block_size);
                Ok(Self { executor: Box::new(exec), tokenizer: Arc::new(TestTokenizer::default()), kv_blocks })
            }
            ModelSource::Path(dir) if dir.is_dir() => {
                let (tok, ..) = hf::HfModel::tokenizer(dir)?;
                let hf = hf::HfModel::open(dir)?;
                let kv_blocks = budget.blocks(crate::cpu::ModelExecutor::kv_bytes_per_block(
                    &hf.config,
                    block_size,
                    Precision::Exact,
                ))?;
                let mut exec = crate::cpu::ModelExecutor::from_hf_model(&hf, kv_blocks, block_size)?;
                limit(&mut exec);
                Ok(Self { executor: Box::new(exec), tokenizer: Arc::new(tok), kv_blocks })
            }
            source => {
                let g = open_source(section)?;
                let source = source.to_string();
                let tokenizer = tokenizer_from_gguf(&g)?;
                let config = crate::cpu::config::LlamaConfig::from_gguf(&g)?;
                let kv_blocks = budget.blocks(crate::cpu::ModelExecutor::kv_bytes_per_block(
                    &config,
                    block_size,
                    Precision::Fast,
                ))?;
                let mut exec = crate::cpu::ModelExecutor::from_gguf(&g, &source, kv_blocks, block_size)?;
                limit(&mut exec);
                Ok(Self { executor: Box::new(exec), tokenizer, kv_blocks })
            }
        }
    }
}

/// `section`'s model on CUDA device `device` (`cuda:N`): a GGUF file or a Hugging Face folder.
#[cfg(feature = "cuda")]
fn cuda_model(
    section: &ModelSection,
    device: Device,
    budget: KvBudget,
    block_size: usize,
) -> Result<LoadedModel, ModelError> {
    use crate::cuda::CudaExecutor;
    let err = |reason: String| ModelError::Device { device, reason };
    let ordinal = device.cuda_ordinal().ok_or_else(|| err("not a CUDA device".into()))? as usize;
    let (mut exec, tokenizer, kv_blocks) = if let ModelSource::Path(dir) = &section.source
        && dir.is_dir()
    {
        let (tok, ..) = hf::HfModel::tokenizer(dir)?;
        let hf = hf::HfModel::open(dir)?;
        let blocks = budget.blocks(CudaExecutor::kv_bytes_per_block(&hf.config, block_size))?;
        let exec = CudaExecutor::from_hf(&hf, ordinal, blocks, block_size).map_err(|e| err(e.to_string()))?;
        (exec, Arc::new(tok) as Arc<dyn Tokenizer>, blocks)
    } else {
        let g = open_source(section)?;
        let config = crate::cpu::config::LlamaConfig::from_gguf(&g)?;
        let blocks = budget.blocks(CudaExecutor::kv_bytes_per_block(&config, block_size))?;
        let exec = CudaExecutor::from_gguf(&g, &section.source.to_string(), ordinal, blocks, block_size)
            .map_err(|e| err(e.to_string()))?;
        (exec, tokenizer_from_gguf(&g)?, blocks)
    };
    if let Some(limit) = section.context_length {
        exec.limit_context(limit as usize).map_err(|e| err(e.to_string()))?;
    }
    Ok(LoadedModel { executor: Box::new(exec), tokenizer, kv_blocks })
}

/// Without the `cuda` feature, a CUDA device is refused by name.
#[cfg(not(feature = "cuda"))]
fn cuda_model(_: &ModelSection, device: Device, _: KvBudget, _: usize) -> Result<LoadedModel, ModelError> {
    Err(ModelError::Device {
        device,
        reason: "this build has no CUDA backend (build with `--features cuda`); use \"cpu\"".into(),
    })
}

/// The tokenizer a GGUF file describes: byte-level BPE (`gpt2`: SmolLM, Llama 3, Qwen2) or
/// SentencePiece BPE (`llama`: Llama 2, Mistral).
pub fn tokenizer_from_gguf(g: &gguf::GgufFile) -> Result<Arc<dyn Tokenizer>, ModelError> {
    match g.get_str("tokenizer.ggml.model")? {
        "gpt2" => Ok(Arc::new(bpe::BpeTokenizer::from_gguf(g)?)),
        "llama" => Ok(Arc::new(spm::SpmTokenizer::from_gguf(g)?)),
        other => Err(ModelError::Unsupported(format!(
            "tokenizer model \"{other}\" (byte-level BPE, \"gpt2\", and SentencePiece BPE, \"llama\", are)"
        ))),
    }
}

/// Whether `section`'s model can run here on `devices`, judged from its metadata alone (a GGUF
/// file's architecture, shapes and tokenizer; a folder's `config.json` and tokenizer files): a node
/// checks it before it starts any worker, so that a model it cannot run is one line naming the
/// file and the cause rather than a worker that fails to start. A CUDA device must also be able to
/// run it (`LlamaConfig::beyond_the_cuda_backend`). The test executor always can.
pub fn check(section: &ModelSection, devices: &[Device]) -> Result<(), ModelError> {
    let config = match &section.source {
        ModelSource::Test => return Ok(()),
        ModelSource::Path(dir) if dir.is_dir() => {
            let config = hf::HfModel::read_config(dir)?;
            hf::HfModel::tokenizer(dir)?;
            config
        }
        _ => {
            let g = open_source(section)?;
            let config = crate::cpu::config::LlamaConfig::from_gguf(&g)?;
            tokenizer_from_gguf(&g)?;
            config
        }
    };
    match (devices.iter().find(|d| **d != Device::Cpu), config.beyond_the_cuda_backend()) {
        (Some(&device), Some(needs)) => Err(ModelError::Device {
            device,
            reason: format!("{needs}, which the CUDA backend does not run (a \"cpu\" worker does)"),
        }),
        _ => Ok(()),
    }
}

/// The GGUF file `section` names, fetching the default model on first use.
pub fn open_source(section: &ModelSection) -> Result<gguf::GgufFile, ModelError> {
    let path = match &section.source {
        ModelSource::Default => {
            let mut last = 0;
            fetch::fetch(&fetch::DEFAULT_MODEL, &fetch::cache_dir(), &mut |done, total| {
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                if pct >= last + 25 {
                    last = pct;
                    tracing::info!(pct, "extracting the default model");
                }
            })
            .map_err(|e| ModelError::Fetch(e.to_string()))?
        }
        ModelSource::Path(path) => path.clone(),
        ModelSource::Test => return Err(ModelError::Fetch("the test executor has no GGUF file".into())),
    };
    Ok(gguf::GgufFile::open(&path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_gives_sampling_defaults_and_the_topology_comes_first() {
        let dir = std::env::temp_dir().join(format!("armature-genconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(generation_config(&dir), SamplingDefaults::default(), "no file, no defaults");
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "eos_token_id": 2}"#,
        )
        .unwrap();
        let g = generation_config(&dir);
        assert_eq!(
            (g.temperature, g.top_p, g.top_k, g.min_p, g.repetition_penalty),
            (Some(0.7), Some(0.8), Some(20), None, Some(1.05))
        );
        let topology = SamplingDefaults { temperature: Some(0.2), ..Default::default() };
        let merged = topology.or(g);
        assert_eq!((merged.temperature, merged.top_k), (Some(0.2), Some(20)));
        std::fs::write(dir.join("generation_config.json"), "not json").unwrap();
        assert_eq!(generation_config(&dir), SamplingDefaults::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
