#!/usr/bin/env python3
"""TTFT of a 2k-token prompt that the worker's pool has evicted, served again: onboarded from the
host tier, onboarded from the disk tier, or recomputed (no tiers), SmolLM2 on the CPU backend, one
node each, same machine, same run. Each round sends prompt P (cold), then Q (which evicts P from
the pool of 120 blocks), then P again: the third request is the one measured. Standard library only.

    cargo build --release && python3 bench/tiers.py [--repeats 5]
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
import time
import urllib.request

from common import BIN, post, stop_node, wait_healthy, words


def topology(mode, port, disk_dir):
    tiers = {
        "none": "",
        "host": '[nodes.cache]\nhost = "1GiB"\n',
        "disk": f'[nodes.cache]\ndisk = "4GiB"\ndisk_dir = "{disk_dir}"\n',
    }[mode]
    return f"""
[cluster]
name = "bench-tiers-{mode}"
cookie = "bench"

[model]
source = "default"

[[nodes]]
name = "n0"
control = "127.0.0.1:{random.randint(20000, 60000)}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", kv_blocks = 120, max_batch_tokens = 512 }}]
{tiers}"""


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text, prefix):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))


def prompt(seed, n=1000):
    return words(seed, n) + ". Summarize:"


def ttft(port, text):
    t0 = time.time()
    out = post(port, {"model": "SmolLM2-135M-Instruct", "prompt": text, "max_tokens": 1, "temperature": 0})
    return time.time() - t0, out["usage"]["prompt_tokens"]


def run(mode, repeats):
    port = random.randint(20000, 60000)
    work = tempfile.mkdtemp(prefix=f"armature-bench-tiers-{mode}-")
    cfg = os.path.join(work, "cluster.toml")
    with open(cfg, "w") as f:
        f.write(topology(mode, port, os.path.join(work, "disk")))
    log = open(os.path.join(work, "node.log"), "w")
    proc = subprocess.Popen([BIN, "serve", "--config", cfg], env=dict(os.environ, RUST_LOG="warn"),
                            stdout=log, stderr=log)
    try:
        wait_healthy(port, 1, f"{mode}: server", log.name)
        cold, again = [], []
        for r in range(repeats):
            p, q = prompt(2 * r), prompt(2 * r + 1)
            t, tokens = ttft(port, p)
            cold.append(t)
            ttft(port, q)
            time.sleep(0.3)  # the offloaded blocks reach the tier and the router hears of them
            t, _ = ttft(port, p)
            again.append(t)
            print(f"  {mode} round {r}: {tokens} prompt tokens, cold {cold[-1]:.3f} s, again {again[-1]:.3f} s",
                  flush=True)
        m = metrics(port)
        onboarded = metric(m, "armature_cache_onboarded_blocks_total")
        return cold, again, onboarded
    finally:
        stop_node(proc)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    results = {mode: run(mode, args.repeats) for mode in ("none", "host", "disk")}
    base = statistics.median(results["none"][1])
    for mode, (cold, again, onboarded) in results.items():
        med = statistics.median(again)
        print(f"{mode:5}: evicted prompt served again, median TTFT {med:.3f} s ({base / med:.1f}x against "
              f"recomputing), cold {statistics.median(cold):.3f} s, {onboarded:.0f} blocks onboarded")
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
