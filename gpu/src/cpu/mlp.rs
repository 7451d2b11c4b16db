//! A layer's MLP on CPU: one gated MLP (SwiGLU or GeGLU), or a mixture of such experts behind a
//! router (Mixtral, Qwen3-MoE). A batch's tokens are grouped by the experts they chose, so that each
//! expert runs once per step over all its tokens and its weights are read once.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::ModelError;

use super::config::{Activation, Experts, LlamaConfig};
use super::kernels::{gelu_tanh, silu, softmax};
use super::llama::{Linear, WeightSource};
use super::matrix::Precision;
use super::threads::for_each_chunk_mut;

/// Buffers an MLP reuses across the layers of a forward pass (and a mixture across its experts).
#[derive(Default)]
pub struct MlpBuffers {
    gated: GatedBuffers,
    /// A mixture's rows gathered for one expert, and that expert's output.
    gathered: Vec<f32>,
    expert_out: Vec<f32>,
}

/// A gated MLP's `[gate | up]` rows and its activations.
#[derive(Default)]
struct GatedBuffers {
    gate_up: Vec<f32>,
    gated: Vec<f32>,
}

/// `buf` as `len` values (their contents are overwritten by the caller).
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

/// A gated MLP: `down(act(gate(x)) · up(x))`, with gate and up fused.
pub struct Gated {
    /// Each output row is `[gate | up]`.
    gate_up: Linear,
    down: Linear,
    ffn: usize,
}

impl Gated {
    fn bytes(&self) -> usize {
        self.gate_up.bytes() + self.down.bytes()
    }

    /// `out = down(act(gate(x)) · up(x))` for `n` rows of `x`.
    fn forward(
        &self,
        act: Activation,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        bufs: &mut GatedBuffers,
    ) {
        let ffn = self.ffn;
        let (gate_up, gated) = (sized(&mut bufs.gate_up, n * 2 * ffn), sized(&mut bufs.gated, n * ffn));
        self.gate_up.forward(x, n, gate_up, scratch);
        let act = match act {
            Activation::Silu => silu,
            Activation::GeluTanh => gelu_tanh,
        };
        let gate_up = &*gate_up;
        for_each_chunk_mut(gated, ffn, |r, out| {
            let (g, u) = gate_up[r * 2 * ffn..(r + 1) * 2 * ffn].split_at(ffn);
            for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                *o = act(g) * u;
            }
        });
        self.down.forward(gated, n, out, scratch);
    }
}

/// The router and the experts of one layer.
pub struct Mixture {
    spec: Experts,
    /// `count × hidden`: each expert's score for a token.
    router: Linear,
    experts: Vec<Gated>,
    /// Experts run over all steps (each reads its weights once a run).
    passes: AtomicU64,
}

pub enum Mlp {
    Dense(Gated),
    Experts(Mixture),
}

impl Mlp {
    /// Bytes the weights take in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Mlp::Dense(g) => g.bytes(),
            Mlp::Experts(m) => m.router.bytes() + m.experts.iter().map(Gated::bytes).sum::<usize>(),
        }
    }

    /// Layer `layer`'s MLP of a model of `c`, from `blk.N.ffn_gate`/`ffn_up`/`ffn_down` (or a
    /// fused `ffn_up` of gate and up, Phi-3's), or from
    /// `ffn_gate_inp` (the router) and the stacked `ffn_gate_exps`/`ffn_up_exps`/`ffn_down_exps`.
    pub fn load(c: &LlamaConfig, g: &dyn WeightSource, layer: usize, p: Precision) -> Result<Self, ModelError> {
        let (h, b) = (c.hidden, format!("blk.{layer}"));
        let Some(spec) = c.experts else {
            // Phi-3 stores gate and up fused in `ffn_up`, gate first: our layout already.
            let gate_up = if g.has(&format!("{b}.ffn_gate.weight")) {
                Linear::stack(vec![
                    Linear::load(g, &format!("{b}.ffn_gate"), c.ffn, h, p)?,
                    Linear::load(g, &format!("{b}.ffn_up"), c.ffn, h, p)?,
                ])
            } else {
                Linear::load(g, &format!("{b}.ffn_up"), 2 * c.ffn, h, p)?
            };
            return Ok(Mlp::Dense(Gated {
                gate_up,
                down: Linear::load(g, &format!("{b}.ffn_down"), h, c.ffn, p)?,
                ffn: c.ffn,
            }));
        };
        let f = spec.ffn;
        let expert = |part: &str, e: usize, rows: usize, cols: usize| -> Result<Linear, ModelError> {
            Ok(Linear { w: g.expert(&format!("{b}.ffn_{part}_exps.weight"), e, rows, cols, p)?, bias: None })
        };
        let experts = (0..spec.count)
            .map(|e| {
                Ok(Gated {
                    gate_up: Linear::stack(vec![expert("gate", e, f, h)?, expert("up", e, f, h)?]),
                    down: expert("down", e, h, f)?,
                    ffn: f,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let router = Linear::load(g, &format!("{b}.ffn_gate_inp"), spec.count, h, Precision::Exact)?;
        Ok(Mlp::Experts(Mixture { spec, router, experts, passes: AtomicU64::new(0) }))
    }

    /// `out` = the MLP of `n` rows of `x`.
    pub fn forward(
        &self,
        act: Activation,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        bufs: &mut MlpBuffers,
    ) {
        match self {
            Mlp::Dense(m) => m.forward(act, x, n, out, scratch, &mut bufs.gated),
            Mlp::Experts(m) => m.forward(act, x, n, out, scratch, bufs),
        }
    }

    /// Experts this layer has run so far (none for a dense MLP).
    pub fn expert_passes(&self) -> u64 {
        match self {
            Mlp::Dense(_) => 0,
            Mlp::Experts(m) => m.passes.load(Ordering::Relaxed),
        }
    }
}

/// Each row's chosen experts and their weights, from the router's scores (`count` a row; turned
/// into probabilities in place): the softmax, the `used` best, and (with `norm_top`) those weights
/// renormalised to sum to one. Both backends route with this.
pub fn route(scores: &mut [f32], spec: &Experts) -> Vec<Vec<(usize, f32)>> {
    scores
        .chunks_exact_mut(spec.count)
        .map(|row| {
            softmax(row);
            let mut order: Vec<usize> = (0..spec.count).collect();
            // Highest first; equal scores keep the lower expert first, as a stable top-k does.
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.truncate(spec.used);
            let total: f32 = if spec.norm_top { order.iter().map(|&e| row[e]).sum() } else { 1.0 };
            order.into_iter().map(|e| (e, row[e] / total)).collect()
        })
        .collect()
}

/// The rows each of `count` experts serves, with their weights, from each row's choices: one
/// pass of an expert over all of its rows.
pub fn rows_by_expert(routes: Vec<Vec<(usize, f32)>>, count: usize) -> Vec<Vec<(usize, f32)>> {
    let mut served: Vec<Vec<(usize, f32)>> = vec![Vec::new(); count];
    for (r, chosen) in routes.into_iter().enumerate() {
        for (e, w) in chosen {
            served[e].push((r, w));
        }
    }
    served
}

impl Mixture {
    /// Each row's chosen experts and their weights (`route` of the router's scores).
    fn route(&self, x: &[f32], n: usize, scratch: &mut Vec<f32>) -> Vec<Vec<(usize, f32)>> {
        let mut scores = vec![0.0f32; n * self.spec.count];
        self.router.forward(x, n, &mut scores, scratch);
        route(&mut scores, &self.spec)
    }

    fn forward(
        &self,
        act: Activation,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        bufs: &mut MlpBuffers,
    ) {
        let h = x.len() / n.max(1);
        let served = rows_by_expert(self.route(x, n, scratch), self.spec.count);
        out.fill(0.0);
        for (expert, rows) in self.experts.iter().zip(&served).filter(|(_, rows)| !rows.is_empty()) {
            let m = rows.len();
            let gathered = sized(&mut bufs.gathered, m * h);
            for (dst, &(r, _)) in gathered.chunks_exact_mut(h).zip(rows) {
                dst.copy_from_slice(&x[r * h..(r + 1) * h]);
            }
            let y = sized(&mut bufs.expert_out, m * h);
            expert.forward(act, gathered, m, y, scratch, &mut bufs.gated);
            self.passes.fetch_add(1, Ordering::Relaxed);
            for (&(r, w), y) in rows.iter().zip(y.chunks_exact(h)) {
                out[r * h..(r + 1) * h].iter_mut().zip(y).for_each(|(o, &v)| *o += w * v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::matrix::Matrix;

    #[test]
    fn routing_picks_the_best_experts_and_renormalises_their_weights() {
        // Three experts scored on a 1-wide input: logits 1, 3, 2 for x = 1.
        let router = Linear { w: Matrix::from_f32(vec![1.0, 3.0, 2.0], 3, 1), bias: None };
        let spec = Experts { count: 3, used: 2, ffn: 1, norm_top: true };
        let m = Mixture { spec, router, experts: Vec::new(), passes: AtomicU64::new(0) };
        let chosen = m.route(&[1.0], 1, &mut Vec::new());
        let (e1, e2) = (2f32.exp(), 1f32.exp()); // softmax numerators of experts 1 and 2, over e^1
        assert_eq!(chosen[0].iter().map(|&(e, _)| e).collect::<Vec<_>>(), [1, 2]);
        assert!((chosen[0][0].1 - e1 / (e1 + e2)).abs() < 1e-6 && (chosen[0][1].1 - e2 / (e1 + e2)).abs() < 1e-6);
        let m = Mixture { spec: Experts { norm_top: false, ..spec }, ..m };
        let chosen = m.route(&[1.0], 1, &mut Vec::new());
        let all = 1.0 + e1 + e2;
        assert!((chosen[0][0].1 - e1 / all).abs() < 1e-6, "the softmax over all three, kept as it is");
    }
}
