"""An f32 numpy forward pass of a Llama-family GGUF (llama: interleaved RoPE as llama.cpp lays out
the weights; qwen2: halves RoPE and q/k/v biases), read with llama.cpp's `gguf` package.

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
        self.HD = self.D // self.H
        self.EPS = float(field(f"{a}.attention.layer_norm_rms_epsilon"))
        self.BASE = float(field(f"{a}.rope.freq_base")) if f"{a}.rope.freq_base" in r.fields else 10000.0

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.EPS) * w

    def rope(self, x):  # x: [T, heads, HD]
        HD, T = self.HD, x.shape[0]
        inv = self.BASE ** (-np.arange(0, HD, 2, dtype=np.float64) / HD)
        if "rope_freqs.weight" in self.W:  # Llama 3.1 frequency scaling, as llama.cpp stores it
            inv = inv / self.W["rope_freqs.weight"].astype(np.float64)
        ang = np.arange(T)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x = x.astype(np.float64)
        if self.arch == "qwen2":
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

    def forward(self, ids):
        W, H, KVH, HD, D = self.W, self.H, self.KVH, self.HD, self.D
        x = W["token_embd.weight"][ids]
        T = len(ids)
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
        for i in range(self.L):
            p = f"blk.{i}."
            h = self.rms(x, W[p + "attn_norm.weight"])
            q = self.rope(self.lin(h, p + "attn_q").reshape(T, H, HD))
            k = self.rope(self.lin(h, p + "attn_k").reshape(T, KVH, HD))
            v = self.lin(h, p + "attn_v").reshape(T, KVH, HD)
            k = np.repeat(k, H // KVH, axis=1)
            v = np.repeat(v, H // KVH, axis=1)
            att = np.einsum("thd,shd->hts", q, k) / np.sqrt(HD) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", att, v).reshape(T, D)
            x = x + o @ W[p + "attn_output.weight"].T
            h = self.rms(x, W[p + "ffn_norm.weight"])
            g = h @ W[p + "ffn_gate.weight"].T
            u = h @ W[p + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
        x = self.rms(x[-1:], W["output_norm.weight"])
        out = W.get("output.weight", W["token_embd.weight"])
        return (x @ out.T)[0]


if __name__ == "__main__":
    m = Model(sys.argv[1])
    print(json.dumps([round(float(v), 5) for v in m.forward(json.loads(sys.argv[2]))]))
