"""llama.cpp (llama-cpp-python) on the same GGUF, measured like `armature bench engine`:
prefill tok/s for one prompt of N tokens, and single-stream decode tok/s (tokens 2..M of a greedy
generation). Medians of --repeats runs. Prints one JSON line.

Usage: python llama_cpp_bench.py MODEL.gguf [--threads 2] [--prefill 512] [--tokens 64] [--repeats 3]
"""

import argparse
import json
import statistics
import time

from llama_cpp import Llama

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--prefill", type=int, default=512)
p.add_argument("--tokens", type=int, default=64)
p.add_argument("--repeats", type=int, default=3)
a = p.parse_args()

llm = Llama(model_path=a.model, n_ctx=2048, n_batch=512, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
text = "Request 0. The quick brown fox jumps over the lazy dog near the river bank at dawn. " * (a.prefill // 8 + 2)
prompt = llm.tokenize(text.encode(), add_bos=False)[: a.prefill]
short = llm.tokenize(text.encode(), add_bos=False)[:16]

prefill = []
for _ in range(a.repeats):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    prefill.append(len(prompt) / (time.perf_counter() - t))

decode = []
for _ in range(a.repeats):
    llm.reset()
    n = 0
    for tok in llm.generate(short, temp=0.0, top_k=1, reset=True):
        n += 1
        if n == 1:
            t = time.perf_counter()
        if n == a.tokens:
            break
    decode.append((a.tokens - 1) / (time.perf_counter() - t))

print(json.dumps({"prefill_tokens": len(prompt), "prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode), "threads": a.threads}))
