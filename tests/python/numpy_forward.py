"""An f32 numpy forward pass of a Llama-family GGUF, read with llama.cpp's `gguf` package, written
from the published model definitions (Hugging Face's modeling_llama, _qwen2, _qwen3, _gemma,
_gemma2, _gemma3) and llama.cpp's GGUF conventions:

- llama, mistral: RoPE on interleaved pairs (llama.cpp permutes their q/k rows); others: halves.
- qwen2: q/k/v biases. qwen3 and gemma3: RMSNorm of each q and k head before RoPE.
- gemma*: embeddings times sqrt(hidden), GELU (tanh) gating; GGUF norms already hold 1 + w.
- mixtures of experts (llama with `expert_count`: Mixtral; qwen3moe): a router's softmax over the
  experts, the `expert_used_count` best, their weights renormalised to sum to one (llama.cpp and
  the released models' `norm_topk_prob`), each a SwiGLU MLP stacked in `ffn_*_exps`.
- gemma2, gemma3: norms after attention and MLP outputs; a sliding window on every layer but each
  2nd (gemma2) or 6th (gemma3); gemma2 soft-caps attention scores and logits; gemma3's windowed
  layers use RoPE base 10000 and its global layers the file's base and linear scaling.
- phi3 (modeling_phi3): q/k/v fused in `attn_qkv` and gate/up in `ffn_up` (gate first); LongRoPE:
  frequencies divided by `rope_factors_long` where the context exceeds
  `rope.scaling.original_context_length` (else `rope_factors_short`), cos and sin times
  `rope.scaling.attn_factor`. Its `attention.sliding_window` (Phi-3 mini 4K's) is ignored, as
  llama.cpp ignores it.

Usage: python numpy_forward.py MODEL.gguf '[token ids]'   -> prints the last position's logits (JSON)
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        field = lambda k: r.fields[k].parts[r.fields[k].data[0]][0]
        opt = lambda k, default=None: field(k) if k in r.fields else default
        text = lambda k: bytes(r.fields[k].parts[r.fields[k].data[0]]).decode() if k in r.fields else None
        self.arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
        a = self.arch
        self.W = {
            t.name: dequantize(t.data, t.tensor_type).reshape(list(reversed([int(d) for d in t.shape]))).astype(np.float32)
            for t in r.tensors
        }
        self.L = int(field(f"{a}.block_count"))
        self.H = int(field(f"{a}.attention.head_count"))
        self.KVH = int(field(f"{a}.attention.head_count_kv"))
        self.D = int(field(f"{a}.embedding_length"))
        self.HD = int(opt(f"{a}.attention.key_length", self.D // self.H))
        self.EPS = float(field(f"{a}.attention.layer_norm_rms_epsilon"))
        self.BASE = float(opt(f"{a}.rope.freq_base", 10000.0))
        self.gemma = a.startswith("gemma")
        self.ATTN_CAP = opt(f"{a}.attn_logit_softcapping")
        self.FINAL_CAP = opt(f"{a}.final_logit_softcapping")
        self.WINDOW = opt(f"{a}.attention.sliding_window")
        period = {"gemma2": 2, "gemma3": 6}.get(a)
        self.windowed = [period is not None and i % period < period - 1 for i in range(self.L)]
        self.CONTEXT = int(field(f"{a}.context_length"))
        self.ORIGINAL = opt(f"{a}.rope.scaling.original_context_length")
        self.MSCALE = float(opt(f"{a}.rope.scaling.attn_factor", 1.0))
        self.LINEAR = float(opt(f"{a}.rope.scaling.factor", 1.0)) if text(f"{a}.rope.scaling.type") == "linear" else 1.0
        # llama.cpp: the 27B Gemma 2 and 3 scale queries by hidden / heads, the others by head size.
        scalar = self.D // self.H if (a, self.L) in (("gemma2", 46), ("gemma3", 62)) else self.HD
        self.SCALE = 1.0 / np.sqrt(scalar)
        self.USED = int(opt(f"{a}.expert_used_count", 0))

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.EPS) * w

    def rope(self, x, local):  # x: [T, heads, HD]
        HD, T = self.HD, x.shape[0]
        base = 10000.0 if (self.arch == "gemma3" and local) else self.BASE
        inv = base ** (-np.arange(0, HD, 2, dtype=np.float64) / HD)
        if "rope_freqs.weight" in self.W:  # Llama 3.1 frequency scaling, as llama.cpp stores it
            inv = inv / self.W["rope_freqs.weight"].astype(np.float64)
        if "rope_factors_long.weight" in self.W:  # Phi-3's LongRoPE
            which = "long" if self.CONTEXT > int(self.ORIGINAL) else "short"
            inv = inv / self.W[f"rope_factors_{which}.weight"].astype(np.float64)
        if not (self.arch == "gemma3" and local):
            inv = inv / self.LINEAR
        ang = np.arange(T)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :] * self.MSCALE, np.sin(ang)[:, None, :] * self.MSCALE
        x = x.astype(np.float64)
        if self.arch not in ("llama", "mistral"):  # Mixtral is `llama`
            x0, x1 = x[..., : HD // 2], x[..., HD // 2 :]
            out = np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
        else:
            x0, x1 = x[..., 0::2], x[..., 1::2]
            out = np.empty(x.shape)
            out[..., 0::2] = x0 * cos - x1 * sin
            out[..., 1::2] = x0 * sin + x1 * cos
        return out.astype(np.float32)

    def lin(self, x, name):
        y = x @ self.W[name + ".weight"].T
        if name + ".bias" in self.W:
            y = y + self.W[name + ".bias"]
        return y

    def act(self, g):
        if self.gemma:  # gelu_pytorch_tanh
            return 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        return g / (1 + np.exp(-g))

    def experts(self, h, p):
        W = self.W
        logits = h @ W[p + "ffn_gate_inp.weight"].T  # [T, experts]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            chosen = np.argsort(-probs[t], kind="stable")[: self.USED]
            weights = probs[t, chosen] / probs[t, chosen].sum()
            for e, w in zip(chosen, weights):
                g = h[t] @ W[p + "ffn_gate_exps.weight"][e].T
                u = h[t] @ W[p + "ffn_up_exps.weight"][e].T
                out[t] += w * ((self.act(g) * u) @ W[p + "ffn_down_exps.weight"][e].T)
        return out

    def forward(self, ids):
        W, H, KVH, HD, D = self.W, self.H, self.KVH, self.HD, self.D
        x = W["token_embd.weight"][ids]
        if self.gemma:
            x = x * np.float32(np.sqrt(D))
        T = len(ids)
        causal = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
        t = np.arange(T)
        for i in range(self.L):
            p = f"blk.{i}."
            local = self.windowed[i]
            mask = causal.copy()
            if local:  # query t sees key s when t - s < window
                mask[(t[:, None] - t[None, :]) >= self.WINDOW] = -np.inf
            h = self.rms(x, W[p + "attn_norm.weight"])
            if p + "attn_qkv.weight" in W:
                qkv = self.lin(h, p + "attn_qkv")
                q_, k_, v_ = np.split(qkv, [H * HD, (H + KVH) * HD], axis=-1)
            else:
                q_, k_, v_ = self.lin(h, p + "attn_q"), self.lin(h, p + "attn_k"), self.lin(h, p + "attn_v")
            q = q_.reshape(T, H, HD)
            k = k_.reshape(T, KVH, HD)
            if p + "attn_q_norm.weight" in W:
                q = self.rms(q, W[p + "attn_q_norm.weight"])
                k = self.rms(k, W[p + "attn_k_norm.weight"])
            q, k = self.rope(q, local), self.rope(k, local)
            v = v_.reshape(T, KVH, HD)
            k = np.repeat(k, H // KVH, axis=1)
            v = np.repeat(v, H // KVH, axis=1)
            att = np.einsum("thd,shd->hts", q, k) * self.SCALE
            if self.ATTN_CAP is not None:
                att = self.ATTN_CAP * np.tanh(att / self.ATTN_CAP)
            att = att + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", att, v).reshape(T, H * HD) @ W[p + "attn_output.weight"].T
            if p + "post_attention_norm.weight" in W:
                o = self.rms(o, W[p + "post_attention_norm.weight"])
            x = x + o
            h = self.rms(x, W[p + "ffn_norm.weight"])
            if p + "ffn_gate_inp.weight" in W:
                m = self.experts(h, p)
            elif p + "ffn_gate.weight" not in W:
                g, u = np.split(h @ W[p + "ffn_up.weight"].T, 2, axis=-1)
                m = (self.act(g) * u) @ W[p + "ffn_down.weight"].T
            else:
                g = h @ W[p + "ffn_gate.weight"].T
                u = h @ W[p + "ffn_up.weight"].T
                m = (self.act(g) * u) @ W[p + "ffn_down.weight"].T
            if p + "post_ffw_norm.weight" in W:
                m = self.rms(m, W[p + "post_ffw_norm.weight"])
            x = x + m
        x = self.rms(x[-1:], W["output_norm.weight"])
        out = W.get("output.weight", W["token_embd.weight"])
        logits = (x @ out.T)[0]
        if self.FINAL_CAP is not None:
            logits = self.FINAL_CAP * np.tanh(logits / self.FINAL_CAP)
        return logits


if __name__ == "__main__":
    m = Model(sys.argv[1])
    print(json.dumps([round(float(v), 5) for v in m.forward(json.loads(sys.argv[2]))]))
