//! A mixture of experts on the device (Mixtral, Qwen3-MoE): the router's scores come back to the
//! host, which routes each row with the CPU backend's `route` (the same choice on both backends),
//! and each chosen expert then runs once over the rows it serves, gathered, its outputs added into
//! the residual weighted by the router. The copy back synchronises the stream once a layer, so
//! decode steps of these models are not captured as CUDA graphs.

use cudarc::driver::PushKernelArg;

use super::{Buf, CudaExecutor, Linear, Scratch, elements_config, f16_bits, rows_config};
use crate::cpu::Precision;
use crate::cpu::config::{Experts, LlamaConfig};
use crate::cpu::llama::WeightSource;
use crate::cpu::mlp::{route, rows_by_expert};
use crate::cuda::CudaError;

/// The router and each expert's `[gate | up]` and down projections.
pub(super) struct Mixture {
    pub spec: Experts,
    pub router: Linear,
    pub experts: Vec<(Linear, Linear)>,
}

impl Mixture {
    /// Layer `layer`'s mixture from `ffn_gate_inp` and the stacked `ffn_*_exps` tensors.
    pub fn load(
        c: &LlamaConfig,
        spec: Experts,
        g: &dyn WeightSource,
        layer: usize,
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> Result<Self, CudaError> {
        let (h, f) = (c.hidden, spec.ffn);
        let model = |e: crate::model::ModelError| CudaError::Model(e.to_string());
        // Rows of expert `e`'s part of `name` as f32, one after the other.
        let rows_of = |name: &str, e: usize, rows: usize, cols: usize| -> Result<Vec<f32>, CudaError> {
            let m = g.expert(&format!("blk.{layer}.{name}.weight"), e, rows, cols, Precision::Exact).map_err(model)?;
            let mut w = vec![0.0f32; rows * cols];
            for (r, row) in w.chunks_exact_mut(cols).enumerate() {
                m.row(r, row);
            }
            Ok(w)
        };
        let linear = |w: Vec<f32>, rows: usize, cols: usize| -> Result<Linear, CudaError> {
            Ok(Linear { w: Buf::upload(stream, &f16_bits(&w))?, bias: None, rows, cols })
        };
        let experts = (0..spec.count)
            .map(|e| {
                let mut gate_up = rows_of("ffn_gate_exps", e, f, h)?;
                gate_up.extend(rows_of("ffn_up_exps", e, f, h)?);
                Ok((linear(gate_up, 2 * f, h)?, linear(rows_of("ffn_down_exps", e, h, f)?, h, f)?))
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let router = g.vector(&format!("blk.{layer}.ffn_gate_inp.weight"), spec.count * h).map_err(model)?;
        Ok(Self { spec, router: linear(router, spec.count, h)?, experts })
    }
}

impl CudaExecutor {
    /// `x += Σ w · expert(xn)` over each of the `n` rows' chosen experts (`xn`: the normed rows).
    pub(super) fn mixture(&self, mix: &Mixture, s: &Scratch, n: usize, gelu: i32) -> Result<(), CudaError> {
        let (h, count, st, k) = (self.config.hidden, mix.spec.count, &self.stream, &self.k);
        self.linear(&mix.router, s.xn.ptr, s.router.ptr, n, false)?;
        let mut scores = vec![0.0f32; n * count];
        // SAFETY: `router` holds at least n × count f32 (the scratch is sized for n rows); the
        // stream is synchronised before `scores` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut scores, s.router.ptr, st.cu_stream()) }?;
        st.synchronize()?;
        let served = rows_by_expert(route(&mut scores, &mix.spec), count);
        let idx: Vec<i32> = served.iter().flatten().map(|&(r, _)| r as i32).collect();
        let weights: Vec<f32> = served.iter().flatten().map(|&(_, w)| w).collect();
        // SAFETY: both hold at most n × used values, the size of their scratch buffers; the host
        // slices are staged before the calls return.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(s.moe_idx.ptr, &idx, st.cu_stream())?;
            cudarc::driver::result::memcpy_htod_async(s.moe_w.ptr, &weights, st.cu_stream())?;
        }
        let mut at = 0u64;
        for ((gate_up, down), rows) in mix.experts.iter().zip(&served) {
            let m = rows.len();
            if m == 0 {
                continue;
            }
            let (idx, w) = (s.moe_idx.ptr + 4 * at, s.moe_w.ptr + 4 * at);
            at += m as u64;
            launch!(st, &k.gather_rows, rows_config(m, 256);
                src = s.xn.ptr, idx = idx, dst = s.gathered.ptr, width = h as i32)?;
            self.linear(gate_up, s.gathered.ptr, s.gate_up.ptr, m, false)?;
            let (f, cfg) = (mix.spec.ffn, elements_config(m * mix.spec.ffn));
            launch!(st, &k.gated_act, cfg; gu = s.gate_up.ptr, o = s.act.ptr, f = f as i32, m = m as i32, gelu = gelu)?;
            self.linear(down, s.act.ptr, s.proj.ptr, m, false)?;
            launch!(st, &k.scatter_add, rows_config(m, 256);
                x = s.x.ptr, y = s.proj.ptr, idx = idx, w = w, width = h as i32)?;
        }
        Ok(())
    }
}
