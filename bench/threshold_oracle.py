#!/usr/bin/env python3
"""What a disaggregation threshold that changes with time could gain on a trace, and how much of
that a planner, which knows only the past, could have. Runs static pools with a fixed threshold
each (the baselines), reads every request's outcome (`requests.csv`), picks for each window of
the trace the threshold under which most of the requests that arrived in it met both SLOs
(hindsight: it knows the window's requests before they arrive), then replays with
`--disagg-schedule`: that schedule, and the same schedule one window late (the best threshold of
the window just seen, which is what a planner reacting every window could know). Standard
library only.

    cargo build --release && python3 bench/threshold_oracle.py [--pools 3,1] [--window 10]
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict

from common import BIN, ROOT

TRACE = os.path.join(ROOT, "..", "shared", "traces", "azure_llm_2023", "AzureLLMInferenceTrace_code.csv")


def simulate(args, out, threshold, schedule=None):
    cmd = [
        BIN, "simulate", "--trace", args.trace, "--format", "azure", "--block-size", "16",
        "--blocks-per-worker", "20000", "--block-bytes", "2MiB", "--workers", str(args.workers),
        "--pools", args.pools, "--prefill-busy-blocks", "1000000000",
        "--disagg-min-blocks", str(threshold), "--out", out,
    ]
    if schedule is not None:
        cmd += ["--disagg-schedule", schedule]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "pools.json")) as f:
        report = json.load(f)
    with open(os.path.join(out, "requests.csv")) as f:
        rows = [(float(r["arrival_s"]), r["within_slo"] == "1") for r in csv.DictReader(f)]
    return report, rows


def best_per_window(runs, window, default):
    """For each window, the threshold under which most of its arrivals met both SLOs (ties keep
    `default`)."""
    met = defaultdict(Counter)
    for threshold, rows in runs.items():
        for arrival, ok in rows:
            met[int(arrival // window)][threshold] += ok
    last = max(met) if met else 0
    best = []
    for w in range(last + 1):
        c = met.get(w, Counter())
        top = max(c.values(), default=0)
        best.append(default if c[default] == top else max(c, key=lambda t: c[t]))
    return best


def write_schedule(path, thresholds, window):
    with open(path, "w") as f:
        for w, t in enumerate(thresholds):
            f.write(f"{w * window} {t}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=TRACE)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--pools", default="3,1")
    ap.add_argument("--thresholds", default="8,24,48,64,96,128")
    ap.add_argument("--default", type=int, default=48, help="the best fixed threshold, kept on ties")
    ap.add_argument("--window", type=float, default=10.0, help="seconds")
    args = ap.parse_args()
    thresholds = [int(t) for t in args.thresholds.split(",")]
    if args.default not in thresholds:
        sys.exit("--default must be one of --thresholds")
    with tempfile.TemporaryDirectory() as tmp:
        runs, fixed = {}, {}
        for t in thresholds:
            report, rows = simulate(args, os.path.join(tmp, f"t{t}"), t)
            runs[t], fixed[t] = rows, report["goodput_ratio"]
            print(f"fixed threshold {t:>4}: goodput {report['goodput_ratio']:.3f}", flush=True)
        best = best_per_window(runs, args.window, args.default)
        results = {}
        for name, schedule in [
            ("hindsight, each window's best", best),
            ("one window late (what a planner could know)", [args.default] + best[:-1]),
        ]:
            path = os.path.join(tmp, "schedule.txt")
            write_schedule(path, schedule, args.window)
            report, _ = simulate(args, os.path.join(tmp, "replay"), args.default, path)
            results[name] = report["goodput_ratio"]
            print(f"{name}: goodput {report['goodput_ratio']:.3f}", flush=True)
        top = max(fixed, key=fixed.get)
        print(f"\nbest fixed threshold {top}: {fixed[top]:.3f}")
        for name, g in results.items():
            print(f"{name}: {g:.3f} ({g - fixed[top]:+.3f})")


if __name__ == "__main__":
    main()
