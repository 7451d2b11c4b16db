#!/usr/bin/env python3
"""Where the served path's CPU time goes: `armature serve` (one node, as bench/serve.py starts it)
under streamed chat load, sampled with `perf record -e cpu-clock` (software clock: no hardware
counters needed), then every sample put in one bucket by its thread and symbol: the forward pass
(matrix products, attention, the rest of the model), the compute pool waiting for work, sampling,
detokenizing and stop strings, the engine's own bookkeeping, and the async runtime's threads
(actors, the gateway's driver, JSON, SSE, HTTP and their syscalls). Needs Debian's linux-perf.

    python3 bench/serve_profile.py [--streams 16] [--rounds 2] [--temperature 0.6 --top-p 0.9] [--bin B]
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile

import serve
from common import BIN, default_model, stop_node, wait_healthy

# (bucket, test on (thread, symbol)), first match wins; thread names are the product's own.
BUCKETS = [
    ("runtime threads: actors, gateway, JSON/SSE, HTTP, syscalls", lambda t, s: t.startswith("tokio")),
    ("compute pool waiting (spin or park)",
     lambda t, s: any(k in s for k in ("Shared::worker", "for_each_task", "__rust_begin_short_backtrace",
                                       "sched_yield", "futex"))),
    ("matrix products (q4_1, q8_0 kernels, grouped)",
     lambda t, s: any(k in s for k in ("avx512vnni", "avx2::", "matrix::", "quantize_block"))),
    ("attention", lambda t, s: "attention::" in s),
    ("sampling (sort, draw)", lambda t, s: any(k in s for k in ("sampling::", "sort::", "argmax"))),
    ("exp (attention softmax and sampling)", lambda t, s: "expf" in s),
    ("detokenize and stop strings", lambda t, s: any(k in s for k in ("tokenizer", "decoder", "stop::", "bpe::"))),
    ("rest of the forward pass (norms, RoPE, KV writes, copies)",
     lambda t, s: any(k in s for k in ("cpu::", "llama::", "kv::", "memmove", "memset", "memcpy", "half::"))),
    ("engine bookkeeping (plan, pool, events, metrics)", lambda t, s: any(k in s for k in ("engine::", "pool::", "metrics"))),
    ("allocator", lambda t, s: any(k in s for k in ("malloc", "free", "_int_", "unlink_chunk", "calloc"))),
    ("kernel (page faults, scheduling)", lambda t, s: s.startswith("[k]")),
]


def breakdown(data):
    """{bucket: percent of samples} from `perf report` over `data`."""
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "comm,sym", "-q", "-g", "none",
                          "--percent-limit", "0"], capture_output=True, text=True, check=True).stdout
    shares = collections.Counter()
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].endswith("%"):
            continue
        pct, thread, sym = float(parts[0].rstrip("%")), parts[1], parts[2].strip()
        bucket = next((name for name, test in BUCKETS if test(thread, sym)), "other")
        shares[bucket] += pct
    return shares


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=BIN)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    model = default_model(args.bin)
    out = tempfile.mkdtemp(prefix="armature-serve-profile-")
    port = serve.free_port()
    cfg = os.path.join(out, "serve.toml")
    with open(cfg, "w") as f:
        f.write(serve.armature_config(model, port, False, args.max_batch))
    log_name = os.path.join(out, "serve.log")
    env = dict(os.environ, ARMATURE_THREADS=str(args.threads), RUST_LOG="warn")
    sampling = {"temperature": args.temperature, "top_p": args.top_p}
    with open(log_name, "w") as log:
        proc = subprocess.Popen([args.bin, "serve", "--config", cfg], stdout=log, stderr=log, env=env)
    data = os.path.join(out, "perf.data")
    try:
        wait_healthy(port, 1, "armature serve", log_name, timeout=180)
        serve.round_of(port, 2, 16, sampling, seed=999)
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-p", str(proc.pid), "-o",
                                data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        figures = [serve.round_of(port, args.streams, args.tokens, sampling, seed=r) for r in range(args.rounds)]
        rec.send_signal(2)
        rec.wait()
    finally:
        stop_node(proc)
    for f in figures:
        print(f"  {args.streams} streams: {f['aggregate_tok_s']:.1f} tok/s aggregate, ITL p50 {f['itl_p50_ms']:.1f} ms")
    shares = breakdown(data)
    print(f"| bucket | share of the server's samples ({args.streams} streams, T {args.temperature}, "
          f"top-p {args.top_p}) |")
    print("|---|---|")
    for name, pct in shares.most_common():
        print(f"| {name} | {pct:.1f}% |")
    print(f"perf data: {data}")


if __name__ == "__main__":
    sys.exit(main())
