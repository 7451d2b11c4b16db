#!/usr/bin/env python3
"""The serving path on a GPU: `armature launch` with one aggregated worker on `cuda:0`, then the
same with the worker on the CPU, in the same run on the same machine. For each: greedy chat
completions (their texts, kept for comparison), one streamed completion (its chunks must add up to
the same text as the plain one and end with [DONE]), and concurrent load (aggregate completion
tokens per second over HTTP). Standard library only; needs a binary built with `--features cuda`.

    python3 bench/cuda_serve.py --bin target/release/armature --model SmolLM2.gguf [--out DIR]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

from common import stop_node, wait_healthy

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences what a GPU is.",
    "List three prime numbers.",
]


def config(device, model, port):
    control = random.randint(20000, 60000)
    blocks = 4096 if device.startswith("cuda") else 1024
    return f"""
[cluster]
name = "cuda-serve"
cookie = "cuda-serve"

[model]
source = "{model}"
name = "smollm2"

[[nodes]]
name = "a"
control = "127.0.0.1:{control}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "{device}", role = "aggregated", kv_blocks = {blocks}, max_batch = 64 }}]
"""


def chat(port, body, timeout=300):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if body.get("stream"):
            return r.read().decode()
        return json.loads(r.read())


def streamed_text(sse):
    """The text of an SSE chat stream, and whether it ended with [DONE]."""
    text, done = "", False
    for line in sse.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            continue
        for choice in json.loads(data).get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
    return text, done


def load(port, streams, max_tokens):
    """`streams` concurrent requests of `max_tokens` tokens each: (completion tokens/s, wall s)."""
    tokens, errors = [], []

    def one(i):
        try:
            out = chat(port, {"model": "smollm2", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                              "messages": [{"role": "user", "content": f"Tell me a long story, number {i}."}]})
            tokens.append(out["usage"]["completion_tokens"])
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(str(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    if errors:
        raise SystemExit(f"{len(errors)} of {streams} requests failed: {errors[0]}")
    return sum(tokens) / wall, wall


def run(binary, device, model, out):
    port = random.randint(20000, 60000)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(config(device, model, port))
    cfg.close()
    log_name = os.path.join(out, f"serve-{device.replace(':', '')}.log")
    log = open(log_name, "w")
    started = time.time()
    proc = subprocess.Popen([binary, "launch", "--config", cfg.name], stdout=log, stderr=log,
                            env=dict(os.environ, RUST_LOG="info"))
    try:
        wait_healthy(port, 1, f"{device}: node", log_name, timeout=180)
        ready = time.time() - started
        texts = []
        for p in PROMPTS:
            r = chat(port, {"model": "smollm2", "max_tokens": 48, "temperature": 0,
                            "messages": [{"role": "user", "content": p}]})
            texts.append(r["choices"][0]["message"]["content"])
        sse = chat(port, {"model": "smollm2", "max_tokens": 48, "temperature": 0, "stream": True,
                          "messages": [{"role": "user", "content": PROMPTS[0]}]})
        stream_text, done = streamed_text(sse)
        rates = {}
        for streams in (1, 16, 64):
            runs = [load(port, streams, 128)[0] for _ in range(3)]
            rates[streams] = statistics.median(runs)
            print(f"  {device}: {streams} concurrent requests of 128 tokens: {rates[streams]:.0f} tok/s "
                  f"(runs {', '.join(f'{r:.0f}' for r in runs)})", flush=True)
        return {"device": device, "ready_s": ready, "texts": texts, "stream_equals_plain": stream_text == texts[0],
                "stream_done": done, "tok_s": rates}
    finally:
        stop_node(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="armature-cuda-serve-"))
    ap.add_argument("--devices", default="cuda:0,cpu", help="the GPU's first, then the CPU baseline")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = [run(args.bin, d, os.path.abspath(args.model), args.out) for d in args.devices.split(",")]
    gpu, cpu = results[0], results[-1]
    for r in results:
        print(f"{r['device']}: ready in {r['ready_s']:.1f} s; streamed text equals plain: {r['stream_equals_plain']}, "
              f"[DONE]: {r['stream_done']}")
        for p, t in zip(PROMPTS, r["texts"]):
            print(f"  {p!r} -> {t!r}")
    same = sum(a == b for a, b in zip(gpu["texts"], cpu["texts"]))
    print(f"greedy texts identical on cuda:0 and cpu: {same} of {len(PROMPTS)}")
    for s in gpu["tok_s"]:
        print(f"{s} concurrent: cuda:0 {gpu['tok_s'][s]:.0f} tok/s, cpu {cpu['tok_s'][s]:.0f} tok/s, "
              f"{gpu['tok_s'][s] / max(cpu['tok_s'][s], 1e-9):.1f}x")
    with open(os.path.join(args.out, "cuda_serve.json"), "w") as f:
        json.dump(results, f, indent=1)
    ok = all(r["stream_equals_plain"] and r["stream_done"] for r in results)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
