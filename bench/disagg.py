#!/usr/bin/env python3
"""End-to-end TTFT of a 2k-token prompt under concurrent decode load, disaggregated (one prefill
node, one decode node) against aggregated (two aggregated nodes), SmolLM2 on the CPU backend, one
compute thread per node, same machine, same run. The disaggregated topology runs once for each KV
path in `--paths` (shared memory, TLS on TCP, QUIC), and for each prompt the script reads from
/metrics the KV bytes that crossed and the decode worker's wait from asking for the prompt to its
last block landing; the transfer's share of the TTFT is those bytes at the path's rate, measured
by `armature bench transfer` at the start of the same run. Standard library only.

    cargo build --release && python3 bench/disagg.py [--repeats 5] [--streams 4] [--paths shm,tls,quic]
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

from common import BIN, metric_sum, metrics, post, stop_node, wait_healthy, words

# How each disaggregated run's KV crosses: its `[transport]` settings, by the path's name in
# `armature_transfer_bytes_total` and in `armature bench transfer`'s JSON (`<name>_gb_s`).
PATHS = {
    "shm": 'shared_memory = true',
    "tls": 'shared_memory = false\nnetwork = "tls"',
    "quic": 'shared_memory = false\nnetwork = "quic"',
}


def topology(mode, port, certs, path="shm"):
    roles = ("aggregated", "aggregated") if mode == "agg" else ("prefill", "decode")
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
{PATHS[path]}

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


def run(mode, repeats, streams, certs, path="shm"):
    """TTFTs, decode rates meanwhile, and per prompt (KV bytes in, ask-to-last-block seconds)."""
    label = mode if mode == "agg" else f"{mode}-{path}"
    port = random.randint(20000, 60000)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(topology(mode, port, certs, path))
    cfg.close()
    env = dict(os.environ, ARMATURE_THREADS="1", RUST_LOG="warn")
    log = open(cfg.name + ".log", "w")
    proc = subprocess.Popen([BIN, "launch", "--config", cfg.name], env=env, stdout=log, stderr=log)
    try:
        wait_healthy(port, 2, f"{label}: cluster", log.name)
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
        ttft, decode, moved = [], [], []
        for r in range(repeats):
            prompt = long_prompt(1000 * r + (0 if mode == "agg" else 1))
            before = metrics(port)
            t0 = time.time()
            out = post(port, {"model": "SmolLM2-135M-Instruct", "prompt": prompt, "max_tokens": 1, "temperature": 0})
            t1 = time.time()
            after = metrics(port)
            ttft.append(t1 - t0)
            delta = {name: metric_sum(after, name, **labels) - metric_sum(before, name, **labels)
                     for name, labels in (("armature_transfer_bytes_total", {"direction": "in"}),
                                          ("armature_kv_transfer_seconds_sum", {}))}
            moved.append((delta["armature_transfer_bytes_total"], delta["armature_kv_transfer_seconds_sum"]))
            # Decode tokens the other streams finished while this prompt was being prefilled.
            decode.append(sum(n for (t, n) in done if t0 <= t <= t1) / (t1 - t0))
            print(f"  {label} run {r}: {out['usage']['prompt_tokens']} prompt tokens, TTFT {ttft[-1]:.2f} s, "
                  f"decode streams {decode[-1]:.1f} tok/s meanwhile, KV in {moved[-1][0] / 1e6:.1f} MB, "
                  f"ask to last block {moved[-1][1]:.2f} s", flush=True)
        stop.set()
        return ttft, decode, moved
    finally:
        stop_node(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--paths", default="shm,tls,quic", help="KV paths of the disaggregated runs (shm, tls, quic)")
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise SystemExit(f"--paths: unknown {unknown}; choose from {sorted(PATHS)}")
    # The paths' rates on this machine now, for the transfer's share of each TTFT.
    bench = subprocess.run([BIN, "bench", "transfer", "--frames", "256", "--repeats", "3"],
                           check=True, capture_output=True, text=True)
    rates = json.loads(bench.stdout.strip().splitlines()[-1])
    certs = tempfile.mkdtemp(prefix="armature-bench-certs-")
    os.rmdir(certs)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(topology("disagg", 8999, certs))
    cfg.close()
    results = {}
    try:
        subprocess.run([BIN, "cert", "init", "--config", cfg.name], check=True, stdout=subprocess.DEVNULL)
        results["agg"] = run("agg", args.repeats, args.streams, certs)
        for path in paths:
            results[f"disagg-{path}"] = run("disagg", args.repeats, args.streams, certs, path)
    finally:
        shutil.rmtree(certs, ignore_errors=True)
        if os.path.exists(certs + ".ca.key"):
            os.unlink(certs + ".ca.key")
        os.unlink(cfg.name)
    agg_t, agg_d = (statistics.median(x) for x in results["agg"][:2])
    print(f"2k-token prompt under {args.streams} decode streams, medians of {args.repeats}:")
    print(f"| run | TTFT | decode streams meanwhile | KV in | ask to last block | path rate | "
          f"transfer at that rate | share of TTFT |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| aggregated | {agg_t:.2f} s | {agg_d:.0f} tok/s | | | | | |")
    for path in paths:
        ttft, decode, moved = results[f"disagg-{path}"]
        t, d = statistics.median(ttft), statistics.median(decode)
        kv, wait = statistics.median(m[0] for m in moved), statistics.median(m[1] for m in moved)
        rate = rates[f"{path}_gb_s"] * 1e9
        wire = kv / rate
        print(f"| disaggregated, {path} | {t:.2f} s ({agg_t / t:.2f}x) | {d:.0f} tok/s ({d / max(agg_d, 1e-9):.1f}x) "
              f"| {kv / 1e6:.1f} MB | {wait:.2f} s | {rate / 1e9:.2f} GB/s | {wire * 1e3:.1f} ms | {wire / t:.1%} |")
    print(json.dumps({"rates": rates, "runs": results}))


if __name__ == "__main__":
    sys.exit(main())
