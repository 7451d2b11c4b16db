"""An f32 numpy forward pass of SmolLM2 (Llama architecture) straight from the GGUF, as a second,
exact reference for the CPU backend (llama.cpp quantizes activations, numpy does not).

Usage: python smollm2_numpy_forward.py MODEL.gguf IN_OUT.json
Reads the `logits` cases of the reference JSON and adds `numpy_last_logits` (full vocabulary,
rounded to 1e-4) to each.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

model_path, ref_path = sys.argv[1], sys.argv[2]
r = GGUFReader(model_path)
field = lambda k: r.fields[k].parts[r.fields[k].data[0]][0]
W = {t.name: dequantize(t.data, t.tensor_type).reshape(list(reversed([int(d) for d in t.shape]))).astype(np.float32) for t in r.tensors}

L = int(field("llama.block_count"))
H = int(field("llama.attention.head_count"))
KVH = int(field("llama.attention.head_count_kv"))
D = int(field("llama.embedding_length"))
HD = D // H
EPS = float(field("llama.attention.layer_norm_rms_epsilon"))
BASE = float(field("llama.rope.freq_base"))


def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def rope(x):  # x: [T, heads, HD], interleaved pairs (llama.cpp's GGUF layout)
    T = x.shape[0]
    inv = BASE ** (-np.arange(0, HD, 2, dtype=np.float64) / HD)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    out = np.empty(x.shape, dtype=np.float64)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out.astype(np.float32)


def forward(ids):
    x = W["token_embd.weight"][ids]
    T = len(ids)
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    for i in range(L):
        p = f"blk.{i}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = rope((h @ W[p + "attn_q.weight"].T).reshape(T, H, HD))
        k = rope((h @ W[p + "attn_k.weight"].T).reshape(T, KVH, HD))
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, KVH, HD)
        k = np.repeat(k, H // KVH, axis=1)
        v = np.repeat(v, H // KVH, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(HD) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, D)
        x = x + o @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
    x = rms(x[-1:], W["output_norm.weight"])
    out = W.get("output.weight", W["token_embd.weight"])
    return (x @ out.T)[0]


ref = json.load(open(ref_path))
for case in ref["logits"]:
    case["numpy_last_logits"] = [round(float(v), 4) for v in forward(case["ids"])]
with open(ref_path, "w") as f:
    json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
print("added numpy logits for", len(ref["logits"]), "prompts")
