//! The CUDA C kernels (`kernels.cu`), compiled at run time by NVRTC for the device's architecture
//! and loaded into its context; no nvcc or CUDA headers are needed at build or run time.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::CudaError;

/// The kernels' source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Warps per attention block (`ATT_WARPS` in the source).
pub const ATTENTION_WARPS: u32 = 4;

/// Rows per prefill attention tile and positions staged at a time (`TILE_ROWS`, `TILE_POS`).
pub const TILE_ROWS: usize = 32;
pub const TILE_POS: usize = 32;

/// Largest head size the tiled prefill attention handles (`TILE_MAX_DIMS` × 32); larger heads
/// use the per-row kernel.
pub const MAX_TILED_HEAD_DIM: usize = 128;

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen libnvrtc and reports whether that worked.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The virtual architecture NVRTC compiles for, for a device of compute capability `cc`.
pub fn architecture(cc: (i32, i32)) -> &'static str {
    match cc {
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        // A newer device runs PTX of an older architecture; an older one is refused at load.
        (major, _) if major >= 9 => "compute_90",
        _ => "compute_75",
    }
}

/// Compile the kernels to PTX for `arch` (`compute_90`, ...).
pub fn compile(arch: &'static str) -> Result<Ptx, CudaError> {
    compile_source(SOURCE, arch)
}

/// Compile CUDA C `source` to PTX for `arch`, with NVRTC's log in the error.
pub fn compile_source(source: &str, arch: &'static str) -> Result<Ptx, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let opts = CompileOptions { arch: Some(arch), name: Some("kernels.cu".into()), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => CudaError::Compile(log.to_string_lossy().into_owned()),
        other => CudaError::Compile(format!("{other:?}")),
    })
}

/// Every kernel, loaded into one context.
pub struct Kernels {
    pub embed: CudaFunction,
    pub rms_norm: CudaFunction,
    pub add_bias: CudaFunction,
    pub rope_cache: CudaFunction,
    pub attention: CudaFunction,
    pub attention_tiles: CudaFunction,
    pub gated_act: CudaFunction,
    pub add_rms_norm: CudaFunction,
    pub head_norm: CudaFunction,
    pub softcap: CudaFunction,
    pub gather_rows: CudaFunction,
    pub scatter_add: CudaFunction,
    pub argmax_rows: CudaFunction,
    pub sample_top_p: CudaFunction,
}

impl Kernels {
    /// Compile for the context's device and load.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self, CudaError> {
        let ptx = compile(architecture(ctx.compute_capability()?))?;
        let m = ctx.load_module(ptx)?;
        let f = |name: &str| m.load_function(name);
        Ok(Self {
            embed: f("embed")?,
            rms_norm: f("rms_norm")?,
            add_bias: f("add_bias")?,
            rope_cache: f("rope_cache")?,
            attention: f("attention")?,
            attention_tiles: f("attention_tiles")?,
            gated_act: f("gated_act")?,
            add_rms_norm: f("add_rms_norm")?,
            head_norm: f("head_norm")?,
            softcap: f("softcap")?,
            gather_rows: f("gather_rows")?,
            scatter_add: f("scatter_add")?,
            argmax_rows: f("argmax_rows")?,
            sample_top_p: f("sample_top_p")?,
        })
    }
}
