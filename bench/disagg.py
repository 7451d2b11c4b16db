#!/usr/bin/env python3
"""End-to-end TTFT of a 2k-token prompt under concurrent decode load, disaggregated (one prefill
node, one decode node) against aggregated (two aggregated nodes), SmolLM2 on the CPU backend, one
compute thread per node, same machine, same run. Standard library only.

    cargo build --release && python3 bench/disagg.py [--repeats 5] [--streams 4]
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import BIN, post, stop_node, wait_healthy, words


def topology(mode, port, certs):
    roles = ("prefill", "decode") if mode == "disagg" else ("aggregated", "aggregated")
    ports = [random.randint(20000, 60000) for _ in range(4)]
    return f"""
[cluster]
name = "bench-{mode}"
cookie = "bench"

[model]
source = "default"

[router]
disagg_min_blocks = 8

[transport]
certs = "{certs}"

[[nodes]]
name = "a"
control = "127.0.0.1:{ports[0]}"
data = "127.0.0.1:{ports[1]}"
workers = [{{ device = "cpu", role = "{roles[0]}", kv_blocks = 1024, max_batch_tokens = 512 }}]

[[nodes]]
name = "b"
control = "127.0.0.1:{ports[2]}"
data = "127.0.0.1:{ports[3]}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", role = "{roles[1]}", kv_blocks = 1024, max_batch_tokens = 512 }}]
"""


def long_prompt(seed, n=1200):
    return words(seed, n) + ". Summarize:"


def run(mode, repeats, streams, certs):
    port = random.randint(20000, 60000)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(topology(mode, port, certs))
    cfg.close()
    env = dict(os.environ, ARMATURE_THREADS="1", RUST_LOG="warn")
    log = open(cfg.name + ".log", "w")
    proc = subprocess.Popen([BIN, "launch", "--config", cfg.name], env=env, stdout=log, stderr=log)
    try:
        wait_healthy(port, 2, f"{mode}: cluster", log.name)
        stop = threading.Event()
        done = []  # (finish time, tokens) of decode requests

        def decode_load(i):
            n = 0
            while not stop.is_set():
                try:
                    out = post(port, {"model": "SmolLM2-135M-Instruct", "prompt": f"Count slowly {i}-{n}:",
                                      "max_tokens": 32, "temperature": 0, "ignore_eos": True})
                    done.append((time.time(), out["usage"]["completion_tokens"]))
                except Exception:
                    return
                n += 1

        load = [threading.Thread(target=decode_load, args=(i,), daemon=True) for i in range(streams)]
        for t in load:
            t.start()
        time.sleep(3)
        ttft, decode = [], []
        for r in range(repeats):
            prompt = long_prompt(1000 * r + (0 if mode == "agg" else 1))
            t0 = time.time()
            out = post(port, {"model": "SmolLM2-135M-Instruct", "prompt": prompt, "max_tokens": 1, "temperature": 0})
            t1 = time.time()
            ttft.append(t1 - t0)
            # Decode tokens the other streams finished while this prompt was being prefilled.
            decode.append(sum(n for (t, n) in done if t0 <= t <= t1) / (t1 - t0))
            print(f"  {mode} run {r}: {out['usage']['prompt_tokens']} prompt tokens, TTFT {ttft[-1]:.2f} s, "
                  f"decode streams {decode[-1]:.1f} tok/s meanwhile", flush=True)
        stop.set()
        return ttft, decode
    finally:
        stop_node(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--streams", type=int, default=4)
    args = ap.parse_args()
    certs = tempfile.mkdtemp(prefix="armature-bench-certs-")
    os.rmdir(certs)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(topology("disagg", 8999, certs))
    cfg.close()
    results = {}
    try:
        subprocess.run([BIN, "cert", "init", "--config", cfg.name], check=True, stdout=subprocess.DEVNULL)
        for mode in ("agg", "disagg"):
            results[mode] = run(mode, args.repeats, args.streams, certs)
    finally:
        shutil.rmtree(certs, ignore_errors=True)
        os.unlink(cfg.name)
    med = {m: (statistics.median(t), statistics.median(d)) for m, (t, d) in results.items()}
    (agg, agg_d), (dis, dis_d) = med["agg"], med["disagg"]
    print(f"2k-token prompt under {args.streams} decode streams, medians: TTFT aggregated {agg:.2f} s, "
          f"disaggregated {dis:.2f} s ({agg / dis:.2f}x); decode streams meanwhile {agg_d:.1f} vs {dis_d:.1f} tok/s "
          f"({dis_d / max(agg_d, 1e-9):.1f}x)")
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
