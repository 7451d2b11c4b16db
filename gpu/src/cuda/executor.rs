//! `CudaExecutor`: a Llama-family model on one CUDA device behind the `Executor` seam. Weights are
//! uploaded once as f16; the KV pool is one device allocation carved into blocks; matrix products
//! run through cuBLAS (f16 inputs, f32 accumulation and output, residual adds fused as beta = 1);
//! the rest are the NVRTC kernels of `kernels.cu`.

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

use super::CudaError;
use super::kernels::{ATTENTION_WARPS, Kernels, MAX_TILED_HEAD_DIM, TILE_POS, TILE_ROWS};
use crate::cpu::config::Activation;
use crate::cpu::kernels::RopeStyle;
use crate::cpu::llama::{LlamaConfig, WeightSource};
use crate::executor::{Executor, ExecutorError, ModelInfo, Pick, SequenceView};
use crate::model::gguf::GgufFile;
use crate::pool::BlockId;

/// Launch a kernel with named arguments (evaluated before the launch builder borrows them).
macro_rules! launch {
    ($stream:expr, $f:expr, $cfg:expr; $($name:ident = $val:expr),* $(,)?) => {{
        // A named copy of each argument (`y = y` included) that outlives the builder's borrow.
        $( #[allow(clippy::redundant_locals)] let $name = $val; )*
        let mut b = $stream.launch_builder($f);
        $( b.arg(&$name); )*
        // SAFETY: every argument matches the kernel's parameter list in kernels.cu, and each
        // pointer covers what the kernel reads or writes for this launch's shape.
        unsafe { b.launch($cfg) }.map(|_| ())
    }};
}

mod mixture;

/// A device allocation and its address.
struct Buf<T> {
    mem: CudaSlice<T>,
    ptr: u64,
}

impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> Buf<T> {
    fn zeros(stream: &Arc<CudaStream>, len: usize) -> Result<Self, CudaError> {
        let mem = stream.alloc_zeros::<T>(len.max(1))?;
        let ptr = mem.device_ptr(stream).0;
        Ok(Self { mem, ptr })
    }

    fn upload(stream: &Arc<CudaStream>, host: &[T]) -> Result<Self, CudaError> {
        let mem = stream.clone_htod(host)?;
        let ptr = mem.device_ptr(stream).0;
        Ok(Self { mem, ptr })
    }

    fn len(&self) -> usize {
        self.mem.len()
    }
}

fn f16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect()
}

/// A weight matrix `rows × cols` in f16, row-major, with an optional f32 bias.
struct Linear {
    w: Buf<u16>,
    bias: Option<Buf<f32>>,
    rows: usize,
    cols: usize,
}

struct Layer {
    attn_norm: Buf<f32>,
    /// q, k and v stacked: output rows `[q | k | v]`.
    qkv: Linear,
    /// Per-head RMSNorm weights of q and of k (Qwen3, Gemma 3).
    qk_norm: Option<(Buf<f32>, Buf<f32>)>,
    o: Linear,
    /// RMSNorm of the attention output before the residual (Gemma 2 and 3).
    post_attn_norm: Option<Buf<f32>>,
    ffn_norm: Buf<f32>,
    mlp: Mlp,
    /// RMSNorm of the MLP output before the residual.
    post_ffn_norm: Option<Buf<f32>>,
}

enum Mlp {
    /// gate and up stacked (output rows `[gate | up]`), and down.
    Dense {
        gate_up: Linear,
        down: Linear,
    },
    Experts(mixture::Mixture),
}

/// Activation buffers for up to `rows` tokens and `outputs` logits rows per step.
struct Scratch {
    rows: usize,
    outputs: usize,
    x: Buf<f32>,
    xn: Buf<u16>,
    /// A projection's output on its way through a post-norm into `x`, or an expert's.
    proj: Buf<f32>,
    /// A mixture's router scores, the rows an expert serves (gathered), and every expert's row
    /// indices and weights.
    router: Buf<f32>,
    gathered: Buf<u16>,
    moe_idx: Buf<i32>,
    moe_w: Buf<f32>,
    qkv: Buf<f32>,
    attn: Buf<u16>,
    gate_up: Buf<f32>,
    act: Buf<u16>,
    last: Buf<u16>,
    logits: Buf<f32>,
    picked: Buf<i32>,
    pick_params: Buf<f32>,
    meta: Buf<i32>,
}

pub struct CudaExecutor {
    name: String,
    config: LlamaConfig,
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    embed: Buf<u16>,
    layers: Vec<Layer>,
    norm: Buf<f32>,
    /// None when tied to the embeddings.
    output: Option<Linear>,
    inv_freq: Buf<f32>,
    /// RoPE's inverse frequencies of windowed layers where they differ (Gemma 3's local base).
    inv_freq_local: Option<Buf<f32>>,
    pool: Buf<u16>,
    blocks: usize,
    block_size: usize,
    scratch: Option<Scratch>,
    graphs: Graphs,
    /// Prefill attention by tiles (`set_tiled`).
    tiled: bool,
    /// Pinned host memory of one block, through which blocks leave and enter the device.
    staging: std::sync::Mutex<cudarc::driver::PinnedHostSlice<u16>>,
    /// cuBLAS's workspace, set explicitly so that graph capture never allocates.
    _workspace: Buf<u8>,
    /// `pool` as other CUDA engines of this process see it (retired before `pool` is freed).
    device_pool: Arc<super::peer::CudaPool>,
}

impl Drop for CudaExecutor {
    fn drop(&mut self) {
        // Before the fields, and with them the pool's allocation, are dropped.
        self.device_pool.retire();
    }
}

/// cuBLAS workspace bytes.
const BLAS_WORKSPACE: usize = 32 << 20;

impl CudaExecutor {
    /// Bytes of one KV block: K and V of every layer in f16.
    pub fn kv_bytes_per_block(config: &LlamaConfig, block_size: usize) -> u64 {
        (2 * config.layers * block_size * config.kv_width() * 2) as u64
    }

    /// Load a GGUF model onto CUDA device `ordinal` with a KV pool of `kv_blocks` blocks of
    /// `block_size` positions (tensors dequantized to f16).
    pub fn from_gguf(
        g: &GgufFile,
        name: &str,
        ordinal: usize,
        kv_blocks: usize,
        block_size: usize,
    ) -> Result<Self, CudaError> {
        let config = LlamaConfig::from_gguf(g).map_err(|e| CudaError::Model(e.to_string()))?;
        Self::load(config, g, name, ordinal, kv_blocks, block_size)
    }

    /// Load a Hugging Face folder (safetensors, converted to f16) onto CUDA device `ordinal`.
    pub fn from_hf(
        hf: &crate::model::hf::HfModel,
        ordinal: usize,
        kv_blocks: usize,
        block_size: usize,
    ) -> Result<Self, CudaError> {
        let name = hf.dir.file_name().map_or("model".into(), |s| s.to_string_lossy().into_owned());
        Self::load(hf.config.clone(), hf, &name, ordinal, kv_blocks, block_size)
    }

    /// Load a model of `config` whose tensors `g` names as GGUF does.
    pub fn load(
        config: LlamaConfig,
        g: &dyn WeightSource,
        name: &str,
        ordinal: usize,
        kv_blocks: usize,
        block_size: usize,
    ) -> Result<Self, CudaError> {
        // Before the device: a model this backend cannot run is refused the same everywhere.
        if let Some(needs) = config.beyond_the_cuda_backend() {
            return Err(CudaError::Model(format!("{needs}; the CPU backend runs this model")));
        }
        if config.experts.is_some() && config.post_norms {
            return Err(CudaError::Model("norms after a mixture of experts".into()));
        }
        super::device(ordinal)?;
        // SAFETY: only tries to dlopen libcublas (cudarc panics on first use when it is missing).
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::NoCublas);
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream per executor and raw addresses in every launch: cudarc's per-slice event
        // tracking is for several streams and would add a record and a wait to each launch.
        // SAFETY: called before any slice of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let workspace = Buf::<u8>::zeros(&stream, BLAS_WORKSPACE)?;
        // SAFETY: the workspace lives as long as the handle (both fields of the executor).
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(
                *blas.handle(),
                workspace.ptr as *mut std::ffi::c_void,
                BLAS_WORKSPACE,
            )
        }
        .result()?;
        let k = Kernels::load(&ctx)?;
        let c = &config;
        let (h, kvw, qw, hd) = (c.hidden, c.kv_width(), c.q_width(), c.head_dim);
        let model = |e: crate::model::ModelError| CudaError::Model(e.to_string());
        let vector = |name: &str, len: usize| -> Result<Buf<f32>, CudaError> {
            Buf::upload(&stream, &g.vector(name, len).map_err(model)?)
        };
        let matrix = |names: &[(&str, usize)], cols: usize| -> Result<Linear, CudaError> {
            let (mut w, mut bias, mut rows, mut any_bias) = (Vec::new(), Vec::new(), 0, false);
            for &(name, r) in names {
                w.extend(f16_bits(&g.vector(&format!("{name}.weight"), r * cols).map_err(model)?));
                let bias_name = format!("{name}.bias");
                if g.has(&bias_name) {
                    any_bias = true;
                    bias.extend(g.vector(&bias_name, r).map_err(model)?);
                } else {
                    bias.extend(std::iter::repeat_n(0.0, r));
                }
                rows += r;
            }
            let bias = if any_bias { Some(Buf::upload(&stream, &bias)?) } else { None };
            Ok(Linear { w: Buf::upload(&stream, &w)?, bias, rows, cols })
        };
        let embed = matrix(&[("token_embd", c.vocab)], h)?.w;
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let optional = |name: &str, len: usize, on: bool| on.then(|| vector(&p(name), len)).transpose();
            // Phi-3 stores q/k/v and gate/up fused, in these layouts already.
            let qkv = if g.has(&p("attn_qkv.weight")) {
                matrix(&[(&p("attn_qkv"), qw + 2 * kvw)], h)?
            } else {
                matrix(&[(&p("attn_q"), qw), (&p("attn_k"), kvw), (&p("attn_v"), kvw)], h)?
            };
            let mlp = match c.experts {
                Some(spec) => Mlp::Experts(mixture::Mixture::load(c, spec, g, i, &stream)?),
                None if g.has(&p("ffn_gate.weight")) => Mlp::Dense {
                    gate_up: matrix(&[(&p("ffn_gate"), c.ffn), (&p("ffn_up"), c.ffn)], h)?,
                    down: matrix(&[(&p("ffn_down"), h)], c.ffn)?,
                },
                None => Mlp::Dense {
                    gate_up: matrix(&[(&p("ffn_up"), 2 * c.ffn)], h)?,
                    down: matrix(&[(&p("ffn_down"), h)], c.ffn)?,
                },
            };
            let qk_norm = match (
                optional("attn_q_norm.weight", hd, c.qk_norm)?,
                optional("attn_k_norm.weight", hd, c.qk_norm)?,
            ) {
                (Some(q), Some(k)) => Some((q, k)),
                _ => None,
            };
            layers.push(Layer {
                attn_norm: vector(&p("attn_norm.weight"), h)?,
                qkv,
                qk_norm,
                o: matrix(&[(&p("attn_output"), h)], qw)?,
                post_attn_norm: optional("post_attention_norm.weight", h, c.post_norms)?,
                ffn_norm: vector(&p("ffn_norm.weight"), h)?,
                mlp,
                post_ffn_norm: optional("post_ffw_norm.weight", h, c.post_norms)?,
            });
        }
        let output = if g.has("output.weight") { Some(matrix(&[("output", c.vocab)], h)?) } else { None };
        let norm = vector("output_norm.weight", h)?;
        let inv_freq = Buf::upload(&stream, &c.inv_freq(false))?;
        let inv_freq_local = c.rope_base_local.map(|_| Buf::upload(&stream, &c.inv_freq(true))).transpose()?;
        let pool_len = kv_blocks * Self::kv_bytes_per_block(c, block_size) as usize / 2;
        let pool = Buf::zeros(&stream, pool_len)?;
        let block_len = Self::kv_bytes_per_block(c, block_size) as usize / 2;
        // SAFETY: plain page-locked host memory (not write-combined: the host reads it back).
        let staging = unsafe { ctx.alloc_pinned_with_flags::<u16>(block_len, 0)? };
        stream.synchronize()?;
        let block_bytes = 2 * block_len;
        let dense = c.experts.is_none();
        let device_pool =
            super::peer::CudaPool::new(ordinal, ctx.clone(), stream.clone(), pool.ptr, kv_blocks, block_bytes);
        Ok(Self {
            device_pool,
            name: name.to_string(),
            config,
            ordinal,
            ctx,
            stream,
            blas,
            k,
            embed,
            layers,
            norm,
            output,
            inv_freq,
            inv_freq_local,
            pool,
            blocks: kv_blocks,
            block_size,
            scratch: None,
            // A mixture of experts syncs with the host once a layer, which a graph cannot hold.
            graphs: Graphs {
                enabled: dense && std::env::var("ARMATURE_CUDA_GRAPHS").map_or(true, |v| v != "0"),
                ..Default::default()
            },
            staging: std::sync::Mutex::new(staging),
            tiled: std::env::var("ARMATURE_CUDA_TILED_ATTENTION").map_or(true, |v| v != "0"),
            _workspace: workspace,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Serve at most `tokens` of context. LongRoPE's frequencies depend on the served context, so
    /// they are chosen again.
    pub fn limit_context(&mut self, tokens: usize) -> Result<(), CudaError> {
        self.config.context_length = self.config.context_length.min(tokens);
        if self.config.long_rope.is_some() {
            self.stream.memcpy_htod(&self.config.inv_freq(false), &mut self.inv_freq.mem)?;
            self.stream.synchronize()?;
        }
        Ok(())
    }

    /// The CUDA device this executor runs on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn scratch(&mut self, rows: usize, outputs: usize, meta: usize) -> Result<&Scratch, CudaError> {
        let fits =
            self.scratch.as_ref().is_some_and(|s| s.rows >= rows && s.outputs >= outputs && s.meta.len() >= meta);
        if !fits {
            let old = self.scratch.take();
            let grow = |want: usize, had: Option<usize>| want.max(had.unwrap_or(0)).next_power_of_two();
            let rows = grow(rows, old.as_ref().map(|s| s.rows));
            let outputs = grow(outputs, old.as_ref().map(|s| s.outputs));
            let meta = grow(meta, old.as_ref().map(|s| s.meta.len()));
            drop(old);
            // Graphs hold the old buffers' addresses.
            self.graphs.ready.clear();
            let c = &self.config;
            let (h, kvw, qw, s) = (c.hidden, c.kv_width(), c.q_width(), &self.stream);
            // A mixture's buffers, where the model has one.
            let moe = |per_row: usize| if c.experts.is_some() { rows * per_row } else { 1 };
            let (count, used) = c.experts.map_or((0, 0), |e| (e.count, e.used));
            let ffn = c.experts.map_or(c.ffn, |e| e.ffn.max(c.ffn));
            self.scratch = Some(Scratch {
                rows,
                outputs,
                x: Buf::zeros(s, rows * h)?,
                xn: Buf::zeros(s, rows * h)?,
                proj: Buf::zeros(s, if c.post_norms || c.experts.is_some() { rows * h } else { 1 })?,
                router: Buf::zeros(s, moe(count))?,
                gathered: Buf::zeros(s, moe(h))?,
                moe_idx: Buf::zeros(s, moe(used))?,
                moe_w: Buf::zeros(s, moe(used))?,
                qkv: Buf::zeros(s, rows * (qw + 2 * kvw))?,
                attn: Buf::zeros(s, rows * qw)?,
                gate_up: Buf::zeros(s, rows * 2 * ffn)?,
                act: Buf::zeros(s, rows * ffn)?,
                last: Buf::zeros(s, outputs * h)?,
                logits: Buf::zeros(s, outputs * c.vocab)?,
                picked: Buf::zeros(s, outputs)?,
                pick_params: Buf::zeros(s, 3 * outputs)?,
                meta: Buf::zeros(s, meta)?,
            });
        }
        Ok(self.scratch.as_ref().expect("allocated above"))
    }

    /// `y[n × l.rows] = x[n × l.cols] · Wᵀ (+ bias)`, or `y += ...` when `accumulate`.
    fn linear(&self, l: &Linear, x: u64, y: u64, n: usize, accumulate: bool) -> Result<(), CudaError> {
        self.matmul(l.w.ptr, l.bias.as_ref().map(|b| b.ptr), l.rows, l.cols, x, y, n, accumulate)
    }

    /// `y[n × rows] = x[n × cols] · Wᵀ (+ bias)` for `W` at `w` (rows × cols f16, row-major).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        w: u64,
        bias: Option<u64>,
        rows: usize,
        cols: usize,
        x: u64,
        y: u64,
        n: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // Row-major W (rows × cols) is column-major Wᵀ; so y (column-major rows × n) = Wᵀᵀ · x.
        // SAFETY: W holds rows × cols f16 values, x holds n × cols f16 and y n × rows f32; the
        // handle runs on this executor's stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                rows as i32,
                n as i32,
                cols as i32,
                (&alpha as *const f32).cast(),
                w as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16F,
                cols as i32,
                x as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16F,
                cols as i32,
                (&beta as *const f32).cast(),
                y as *mut std::ffi::c_void,
                cudaDataType::CUDA_R_32F,
                rows as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        if let Some(b) = bias {
            let cfg = rows_config(n, 256);
            launch!(self.stream, &self.k.add_bias, cfg; y = y, b = b, w = rows as i32)?;
        }
        Ok(())
    }

    /// The forward pass up to each wanting row's logits in `scratch.logits`; returns the batch
    /// indices that want logits, in order. A decode step (one new token per sequence, all
    /// wanting logits) whose shape was seen before replays a captured CUDA graph.
    fn run(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<usize>, ExecutorError> {
        let vocab = self.config.vocab;
        for (s, v) in batch.iter().enumerate() {
            if v.start >= v.tokens.len() {
                return Err(ExecutorError::Forward(format!("sequence {s} has nothing to compute")));
            }
            if v.blocks.len() * self.block_size < v.tokens.len() {
                return Err(ExecutorError::Blocks(format!(
                    "{} blocks for {} tokens of sequence {s}",
                    v.blocks.len(),
                    v.tokens.len()
                )));
            }
            if let Some(b) = v.blocks.iter().find(|b| b.0 as usize >= self.blocks) {
                return Err(ExecutorError::Blocks(format!("block {} is outside the pool", b.0)));
            }
            if let Some(t) = v.tokens[v.start..].iter().find(|&&t| t as usize >= vocab) {
                return Err(ExecutorError::Forward(format!("token {t} is outside the vocabulary of {vocab}")));
            }
        }
        let decode = batch.iter().all(|v| v.wants_logits && v.start + 1 == v.tokens.len());
        // A decode step's tables are padded to a power of two per sequence, so every pointer a
        // graph holds stays put while the sequences grow.
        let table_cap =
            if decode { batch.iter().map(|v| v.blocks.len()).max().unwrap_or(1).next_power_of_two() } else { 0 };
        let tiled = !decode && self.tiled && self.config.head_dim <= MAX_TILED_HEAD_DIM;
        let (meta, at, wanting) = metadata(batch, table_cap, tiled);
        let (n, m) = (at.rows, wanting.len());
        let fwd = |e: CudaError| ExecutorError::Forward(e.to_string());
        self.ctx.bind_to_thread().map_err(|e| fwd(e.into()))?;
        self.scratch(n, m.max(1), meta.len()).map_err(fwd)?;
        let s = self.scratch.as_mut().expect("allocated");
        self.stream.memcpy_htod(&meta, &mut s.meta.mem.slice_mut(0..meta.len())).map_err(|e| fwd(e.into()))?;
        let ptrs = at.pointers(s.meta.ptr);
        if !decode || !self.graphs.enabled {
            self.enqueue(n, m, at.tiles, &ptrs).map_err(fwd)?;
            return Ok(wanting);
        }
        let key = (n, table_cap);
        if let Some(g) = self.graphs.ready.get(&key) {
            g.0.launch().map_err(|e| fwd(e.into()))?;
            self.graphs.replays += 1;
            return Ok(wanting);
        }
        let seen = self.graphs.seen.entry(key).or_insert(0);
        *seen += 1;
        if *seen < 2 || self.graphs.ready.len() >= MAX_GRAPHS {
            // First sighting (or too many shapes): run eagerly, which also warms cuBLAS up.
            self.enqueue(n, m, 0, &ptrs).map_err(fwd)?;
            return Ok(wanting);
        }
        self.stream
            .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| fwd(e.into()))?;
        let queued = self.enqueue(n, m, 0, &ptrs);
        let graph = self.stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        queued.map_err(fwd)?;
        match graph.map_err(|e| fwd(e.into()))? {
            Some(g) => {
                g.launch().map_err(|e| fwd(e.into()))?;
                self.graphs.ready.insert(key, Graph(g));
                self.graphs.captured += 1;
            }
            None => self.enqueue(n, m, 0, &ptrs).map_err(fwd)?,
        }
        Ok(wanting)
    }

    /// Queue the forward pass of `n` rows (`m` wanting logits) on the stream; attention by
    /// `tiles` prefill tiles when not 0, else one block per row and head.
    fn enqueue(&self, n: usize, m: usize, tiles: usize, p: &MetaPointers) -> Result<(), CudaError> {
        let c = &self.config;
        let (h, bs, hd) = (c.hidden, self.block_size, c.head_dim);
        let s = self.scratch.as_ref().expect("allocated by run");
        let (k, st) = (&self.k, &self.stream);
        let rows = rows_config(n, 256);
        let embed_scale = if c.embed_scale { (h as f32).sqrt() } else { 1.0 };
        launch!(st, &k.embed, rows; t = self.embed.ptr, tok = p.tokens, x = s.x.ptr, h = h as i32, sc = embed_scale)?;
        let attn_cfg = LaunchConfig {
            grid_dim: (n as u32, c.heads as u32, 1),
            block_dim: (32 * ATTENTION_WARPS, 1, 1),
            shared_mem_bytes: ((hd + 2 * ATTENTION_WARPS as usize + ATTENTION_WARPS as usize * hd) * 4) as u32,
        };
        let tile_cfg = LaunchConfig {
            grid_dim: (tiles as u32, c.heads as u32, 1),
            block_dim: (32 * ATTENTION_WARPS, 1, 1),
            shared_mem_bytes: ((TILE_ROWS + 2 * TILE_POS) * hd * 4) as u32,
        };
        let halves = i32::from(c.rope_style == RopeStyle::Halves);
        let (rope_scale, softcap) = (c.rope_scale(), c.attn_softcap.unwrap_or(0.0));
        let gelu = i32::from(c.activation == Activation::GeluTanh);
        // `x += l(input)`, through the post-norm `norm` where the layer has one.
        let residual = |l: &Linear, input: u64, norm: &Option<Buf<f32>>| -> Result<(), CudaError> {
            match norm {
                Some(w) => {
                    self.linear(l, input, s.proj.ptr, n, false)?;
                    launch!(st, &k.add_rms_norm, rows;
                        x = s.x.ptr, y = s.proj.ptr, w = w.ptr, h = h as i32, e = c.eps)?;
                    Ok(())
                }
                None => self.linear(l, input, s.x.ptr, n, true),
            }
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let window = c.window(li);
            let inv = match (&self.inv_freq_local, window) {
                (Some(local), Some(_)) => local.ptr,
                _ => self.inv_freq.ptr,
            };
            let window = window.map_or(0, |w| w as i32);
            launch!(st, &k.rms_norm, rows;
                x = s.x.ptr, r = 0u64, w = layer.attn_norm.ptr, o = s.xn.ptr, h = h as i32, e = c.eps)?;
            self.linear(&layer.qkv, s.xn.ptr, s.qkv.ptr, n, false)?;
            if let Some((qn, kn)) = &layer.qk_norm {
                launch!(st, &k.head_norm, rows;
                    qkv = s.qkv.ptr, qn = qn.ptr, kn = kn.ptr, heads = c.heads as i32, kv_heads = c.kv_heads as i32,
                    hd = hd as i32, e = c.eps)?;
            }
            launch!(st, &k.rope_cache, rows;
                qkv = s.qkv.ptr, pos = p.pos, seq = p.seq, off = p.table_off, tables = p.tables,
                inv = inv, pool = self.pool.ptr, layer = li as i32, layers = c.layers as i32,
                heads = c.heads as i32, kv_heads = c.kv_heads as i32, hd = hd as i32, bs = bs as i32,
                halves = halves, rope_scale = rope_scale)?;
            if tiles > 0 {
                launch!(st, &k.attention_tiles, tile_cfg;
                    qkv = s.qkv.ptr, pos = p.pos, seq = p.seq, off = p.table_off, tables = p.tables,
                    tiles = p.tiles, pool = self.pool.ptr, out = s.attn.ptr, layer = li as i32,
                    layers = c.layers as i32, heads = c.heads as i32, kv_heads = c.kv_heads as i32, hd = hd as i32,
                    bs = bs as i32, scale = c.attn_scale, softcap = softcap, window = window)?;
            } else {
                launch!(st, &k.attention, attn_cfg;
                    qkv = s.qkv.ptr, pos = p.pos, seq = p.seq, off = p.table_off, tables = p.tables,
                    pool = self.pool.ptr, out = s.attn.ptr, layer = li as i32, layers = c.layers as i32,
                    heads = c.heads as i32, kv_heads = c.kv_heads as i32, hd = hd as i32, bs = bs as i32,
                    scale = c.attn_scale, softcap = softcap, window = window)?;
            }
            residual(&layer.o, s.attn.ptr, &layer.post_attn_norm)?;
            launch!(st, &k.rms_norm, rows;
                x = s.x.ptr, r = 0u64, w = layer.ffn_norm.ptr, o = s.xn.ptr, h = h as i32, e = c.eps)?;
            match &layer.mlp {
                Mlp::Dense { gate_up, down } => {
                    self.linear(gate_up, s.xn.ptr, s.gate_up.ptr, n, false)?;
                    let cfg = elements_config(n * c.ffn);
                    launch!(st, &k.gated_act, cfg;
                        gu = s.gate_up.ptr, o = s.act.ptr, f = c.ffn as i32, n = n as i32, gelu = gelu)?;
                    residual(down, s.act.ptr, &layer.post_ffn_norm)?;
                }
                Mlp::Experts(mix) => self.mixture(mix, s, n, gelu)?,
            }
        }
        if m > 0 {
            launch!(st, &k.rms_norm, rows_config(m, 256);
                x = s.x.ptr, r = p.want, w = self.norm.ptr, o = s.last.ptr, h = h as i32, e = c.eps)?;
            match &self.output {
                Some(o) => self.linear(o, s.last.ptr, s.logits.ptr, m, false)?,
                None => self.matmul(self.embed.ptr, None, c.vocab, h, s.last.ptr, s.logits.ptr, m, false)?,
            }
            if let Some(cap) = c.final_softcap {
                let (len, cfg) = (m * c.vocab, elements_config(m * c.vocab));
                launch!(st, &k.softcap, cfg; x = s.logits.ptr, len = len as i32, cap = cap)?;
            }
        }
        Ok(())
    }

    /// Decode steps replayed from CUDA graphs and graphs captured so far.
    pub fn graph_stats(&self) -> (u64, u64) {
        (self.graphs.replays, self.graphs.captured)
    }

    /// Prefill attention by tiles of rows sharing staged K and V (on by default;
    /// `ARMATURE_CUDA_TILED_ATTENTION=0` turns it off at load), else one block per row.
    pub fn set_tiled(&mut self, on: bool) {
        self.tiled = on;
    }

    /// Capture and replay decode steps as CUDA graphs (on by default; `ARMATURE_CUDA_GRAPHS=0`
    /// turns them off at load).
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs.enabled = on;
    }
}

/// Most decode shapes kept as graphs (batch size × table capacity).
const MAX_GRAPHS: usize = 256;

/// Captured decode steps, by (rows, table capacity per sequence).
#[derive(Default)]
struct Graphs {
    enabled: bool,
    ready: std::collections::HashMap<(usize, usize), Graph>,
    seen: std::collections::HashMap<(usize, usize), u32>,
    replays: u64,
    captured: u64,
}

/// A captured decode step.
struct Graph(cudarc::driver::CudaGraph);

// SAFETY: a graph is launched only through `&mut CudaExecutor`, so from one thread at a time, and
// with the executor's context bound to that thread (`run` binds it first); CUDA graph handles are
// not tied to the thread that created them.
unsafe impl Send for Graph {}

/// Where each part of a step's metadata starts (in i32s) and how many rows it has.
struct MetaLayout {
    rows: usize,
    /// Prefill tiles (0: attention by rows).
    tiles: usize,
    tokens: usize,
    pos: usize,
    seq: usize,
    table_off: usize,
    tables: usize,
    want: usize,
    tile_list: usize,
}

/// Device addresses of the metadata parts.
struct MetaPointers {
    tokens: u64,
    pos: u64,
    seq: u64,
    table_off: u64,
    tables: u64,
    want: u64,
    tiles: u64,
}

impl MetaLayout {
    fn pointers(&self, base: u64) -> MetaPointers {
        let at = |i: usize| base + 4 * i as u64;
        MetaPointers {
            tokens: at(self.tokens),
            pos: at(self.pos),
            seq: at(self.seq),
            table_off: at(self.table_off),
            tables: at(self.tables),
            want: at(self.want),
            tiles: at(self.tile_list),
        }
    }
}

/// One step's metadata as i32s: each new row's token, position and sequence; each sequence's
/// table offset; the block tables (each padded to `table_cap` entries when it is not 0); the
/// rows that want logits; with `tiled`, each sequence's rows cut into prefill tiles (first row,
/// row count). Also, for each logits row, the batch index of its sequence (a sequence scoring its
/// prompt has a row for each of its tokens).
fn metadata(batch: &[SequenceView<'_>], table_cap: usize, tiled: bool) -> (Vec<i32>, MetaLayout, Vec<usize>) {
    let (mut tokens, mut pos, mut seq, mut table_off, mut tables, mut want, mut wanting) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut tiles = Vec::new();
    for (s, v) in batch.iter().enumerate() {
        if tiled {
            let (first, count) = (tokens.len(), v.tokens.len() - v.start);
            for at in (0..count).step_by(TILE_ROWS) {
                tiles.extend([(first + at) as i32, (count - at).min(TILE_ROWS) as i32]);
            }
        }
        table_off.push(tables.len() as i32);
        tables.extend(v.blocks.iter().map(|b| b.0 as i32));
        if table_cap > 0 {
            tables.resize(table_off[s] as usize + table_cap, 0);
        }
        for p in v.start..v.tokens.len() {
            tokens.push(v.tokens[p] as i32);
            pos.push(p as i32);
            seq.push(s as i32);
        }
        // One logits row for each wanted row (every row of a chunk that scores its prompt).
        for row in tokens.len() - v.logit_rows()..tokens.len() {
            want.push(row as i32);
            wanting.push(s);
        }
    }
    let rows = tokens.len();
    let mut meta = Vec::with_capacity(3 * rows + table_off.len() + tables.len() + want.len());
    let mut layout = MetaLayout {
        rows,
        tiles: tiles.len() / 2,
        tokens: 0,
        pos: 0,
        seq: 0,
        table_off: 0,
        tables: 0,
        want: 0,
        tile_list: 0,
    };
    for (part, slot) in [
        (tokens, &mut layout.tokens),
        (pos, &mut layout.pos),
        (seq, &mut layout.seq),
        (table_off, &mut layout.table_off),
        (tables, &mut layout.tables),
        (want, &mut layout.want),
        (tiles, &mut layout.tile_list),
    ] {
        *slot = meta.len();
        meta.extend(part);
    }
    (meta, layout, wanting)
}

fn rows_config(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// One thread per value of `len`, in blocks of 256.
fn elements_config(len: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((len as u32).div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

impl Executor for CudaExecutor {
    fn info(&self) -> ModelInfo {
        let c = &self.config;
        ModelInfo { name: self.name.clone(), vocab_size: c.vocab, context_length: c.context_length as u32 }
    }

    fn forward(&mut self, batch: &[SequenceView<'_>]) -> Result<Vec<Option<Vec<f32>>>, ExecutorError> {
        let mut out = vec![None; batch.len()];
        if batch.is_empty() {
            return Ok(out);
        }
        let wanting = self.run(batch)?;
        let vocab = self.config.vocab;
        let mut host = vec![0.0f32; wanting.len() * vocab];
        if !wanting.is_empty() {
            let s = self.scratch.as_ref().expect("allocated by run");
            self.stream
                .memcpy_dtoh(&s.logits.mem.slice(0..host.len()), &mut host)
                .map_err(|e| ExecutorError::Forward(e.to_string()))?;
        }
        self.stream.synchronize().map_err(|e| ExecutorError::Forward(e.to_string()))?;
        for (i, s) in wanting.into_iter().enumerate() {
            out[s].get_or_insert_with(Vec::new).extend_from_slice(&host[i * vocab..(i + 1) * vocab]);
        }
        Ok(out)
    }

    fn picks_tokens(&self) -> bool {
        true
    }

    fn forward_picked(
        &mut self,
        batch: &[SequenceView<'_>],
        picks: &[Option<Pick>],
    ) -> Option<Result<Vec<Option<u32>>, ExecutorError>> {
        // A prompt being scored needs its logits on the host: not a batch this picks for.
        if batch.iter().any(|v| v.all_logits) {
            return None;
        }
        Some(self.forward_and_pick(batch, picks))
    }

    fn block_layout(&self) -> Option<runtime::kv::BlockLayout> {
        Some(runtime::kv::BlockLayout {
            layers: self.config.layers as u32,
            block_size: self.block_size as u32,
            kv_width: self.config.kv_width() as u32,
            dtype_bytes: 2,
        })
    }

    fn model_fingerprint(&self) -> u64 {
        // The same as the CPU backend's, so blocks move between CPU and CUDA workers of one model.
        crate::cpu::fingerprint(&self.name, &self.config)
    }

    fn device_pool(&self) -> Option<Arc<dyn crate::executor::DevicePool>> {
        Some(self.device_pool.clone())
    }

    fn export_block(&self, block: BlockId, out: &mut [u8]) -> Result<(), ExecutorError> {
        let range = self.block_range(block, out.len())?;
        let err = |e: cudarc::driver::DriverError| ExecutorError::Blocks(e.to_string());
        self.ctx.bind_to_thread().map_err(err)?;
        let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let len = range.len();
        self.stream.memcpy_dtoh(&self.pool.mem.slice(range), &mut *staging).map_err(err)?;
        self.stream.synchronize().map_err(err)?;
        for (o, v) in out.chunks_exact_mut(2).zip(&staging.as_slice().map_err(err)?[..len]) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }

    fn import_block(&mut self, block: BlockId, data: &[u8]) -> Result<(), ExecutorError> {
        let range = self.block_range(block, data.len())?;
        let err = |e: cudarc::driver::DriverError| ExecutorError::Blocks(e.to_string());
        self.ctx.bind_to_thread().map_err(err)?;
        let staging = self.staging.get_mut().unwrap_or_else(|p| p.into_inner());
        for (v, b) in staging.as_mut_slice().map_err(err)?.iter_mut().zip(data.chunks_exact(2)) {
            *v = u16::from_le_bytes([b[0], b[1]]);
        }
        self.stream.memcpy_htod(&*staging, &mut self.pool.mem.slice_mut(range)).map_err(err)?;
        self.stream.synchronize().map_err(err)
    }
}

impl CudaExecutor {
    fn block_range(&self, block: BlockId, len: usize) -> Result<std::ops::Range<usize>, ExecutorError> {
        let layout = self.block_layout().expect("CUDA blocks move");
        crate::executor::check_block_len(&layout, len)?;
        if block.0 as usize >= self.blocks {
            return Err(ExecutorError::Blocks(format!("block {} is outside the pool", block.0)));
        }
        let per = len / 2;
        Ok(block.0 as usize * per..(block.0 as usize + 1) * per)
    }

    fn forward_and_pick(
        &mut self,
        batch: &[SequenceView<'_>],
        picks: &[Option<Pick>],
    ) -> Result<Vec<Option<u32>>, ExecutorError> {
        let mut out = vec![None; batch.len()];
        if batch.is_empty() {
            return Ok(out);
        }
        let wanting = self.run(batch)?;
        if wanting.is_empty() {
            return Ok(out);
        }
        let m = wanting.len();
        let fwd = |e: cudarc::driver::DriverError| ExecutorError::Forward(e.to_string());
        let chosen: Vec<Pick> =
            wanting.iter().map(|&s| picks.get(s).copied().flatten().unwrap_or(Pick::Greedy)).collect();
        let s = self.scratch.as_mut().expect("allocated by run");
        let vocab = self.config.vocab as i32;
        let cfg = rows_config(m, 1024);
        if chosen.iter().all(|p| *p == Pick::Greedy) {
            launch!(self.stream, &self.k.argmax_rows, cfg; l = s.logits.ptr, v = vocab, o = s.picked.ptr)
                .map_err(fwd)?;
        } else {
            // Greedy rows among sampled ones: temperature tiny, nucleus of one.
            let mut params = vec![0.0f32; 3 * m];
            for (i, p) in chosen.iter().enumerate() {
                let (t, top_p, u) = match *p {
                    Pick::Greedy => (1e-4, 1e-6, 0.0),
                    Pick::Nucleus { temperature, top_p, uniform } => (temperature, top_p, uniform),
                };
                params[i] = t;
                params[m + i] = top_p;
                params[2 * m + i] = u;
            }
            self.stream.memcpy_htod(&params, &mut s.pick_params.mem.slice_mut(0..3 * m)).map_err(fwd)?;
            let pp = s.pick_params.ptr;
            launch!(self.stream, &self.k.sample_top_p, cfg;
                l = s.logits.ptr, v = vocab, t = pp, p = pp + 4 * m as u64, u = pp + 8 * m as u64, o = s.picked.ptr)
            .map_err(fwd)?;
        }
        let mut host = vec![0i32; m];
        self.stream.memcpy_dtoh(&s.picked.mem.slice(0..m), &mut host).map_err(fwd)?;
        self.stream.synchronize().map_err(fwd)?;
        for (&seq, t) in wanting.iter().zip(host) {
            out[seq] = Some(t.max(0) as u32);
        }
        Ok(out)
    }
}
