#!/usr/bin/env python3
"""The served path against the engine alone and against llama.cpp's own server, in one run on one
machine: `armature bench engine` (no HTTP), `armature serve` (one node), a two-node `armature
launch` (a gateway node and a worker node on loopback; once plaintext, once with mutual TLS between
them), and `llama-server` on the same GGUF with the same threads, each loaded with the same
streamed chat completions (`ignore_eos`; greedy unless --temperature) at each concurrency. Per server and concurrency it reports, as medians over --repeats rounds: aggregate
completion tok/s (all tokens over the round's wall time), a stream's decode tok/s (its tokens after
the first over the time from its first to its last), TTFT p50/p90 and inter-token p50/p90 (gaps
between content chunks). Standard library only; the load generator is one thread per stream on
http.client, so its own cost per token is a line read and a JSON parse.

    cargo build --release
    python3 bench/serve.py [--llama-server PATH] [--concurrency 1,16] [--tokens 128] [--repeats 3]

`bench/llama_server.sh` builds llama-server from the llama.cpp sources that the llama-cpp-python sdist
vendors (about 20 minutes on 2 cores); this script finds it there. Without one (nor --llama-server,
$LLAMA_SERVER or one on PATH) its rows are left out and the run says so.
"""
import argparse
import glob
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import BIN, ROOT, default_model, stop_node, wait_healthy

MODEL_NAME = "SmolLM2-135M-Instruct"
PROMPT = "Tell me a long story about a lighthouse keeper, number {i}."


def percentile(values, q):
    """The q-th percentile (0-100) of `values`, nearest rank."""
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def stream_one(port, i, tokens, sampling, out):
    """One streamed chat completion sampled with `sampling` (fields of the request); appends
    {ttft, gaps, tokens, decode_s, start, end} to `out`."""
    body = json.dumps({
        "model": MODEL_NAME, "max_tokens": tokens, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": PROMPT.format(i=i)}], **sampling,
    })
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    stamps, usage = [], None
    while True:
        line = resp.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    conn.close()
    if not stamps:
        raise RuntimeError("a stream carried no content")
    n = usage["completion_tokens"] if usage else len(stamps)
    out.append({
        "ttft": stamps[0] - start,
        "gaps": [b - a for a, b in zip(stamps, stamps[1:])],
        "tokens": n,
        "prompt_tokens": usage["prompt_tokens"] if usage else 0,
        "chunks": len(stamps),
        "decode_s": stamps[-1] - stamps[0],
        "start": start,
        "end": end,
    })


def round_of(port, streams, tokens, sampling, seed):
    """`streams` concurrent streams started together: the round's figures."""
    results, errors = [], []

    def one(i):
        try:
            stream_one(port, seed * 1000 + i, tokens, sampling, results)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} of {streams} streams failed: {errors[0]}")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    gaps = [g for r in results for g in r["gaps"]]
    decode = [(r["tokens"] - 1) / r["decode_s"] for r in results if r["decode_s"] > 0]
    return {
        "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
        "stream_decode_tok_s": statistics.median(decode),
        "ttft_p50_ms": percentile([r["ttft"] for r in results], 50) * 1e3,
        "ttft_p90_ms": percentile([r["ttft"] for r in results], 90) * 1e3,
        "itl_p50_ms": percentile(gaps, 50) * 1e3,
        "itl_p90_ms": percentile(gaps, 90) * 1e3,
        "tokens_per_chunk": sum(r["tokens"] for r in results) / sum(r["chunks"] for r in results),
        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in results),
    }


def measure(label, port, args):
    """Every concurrency on one running server: {streams: medians of the rounds' figures}."""
    concurrency, tokens, repeats = args.concurrency, args.tokens, args.repeats
    round_of(port, 2, 16, args.sampling, seed=999)  # warm-up: first allocations, caches, thread pools
    figures = {}
    for c in concurrency:
        rounds = [round_of(port, c, tokens, args.sampling, seed=r * 100 + c) for r in range(repeats)]
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        figures[c] = med
        each = ", ".join(f"{r['aggregate_tok_s']:.0f}" for r in rounds)
        print(f"  {label} x{c}: {med['aggregate_tok_s']:.1f} tok/s aggregate "
              f"(rounds {each}), stream decode "
              f"{med['stream_decode_tok_s']:.1f} tok/s, TTFT p50 {med['ttft_p50_ms']:.0f} ms, "
              f"ITL p50 {med['itl_p50_ms']:.1f} ms p90 {med['itl_p90_ms']:.1f} ms", flush=True)
    return figures


def free_port():
    """A port below the kernel's ephemeral range that nothing holds now."""
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def armature_config(model, port, two_nodes, max_batch, certs=None):
    """One node with every role, or a gateway node and a worker node (mutual TLS between them with
    `certs`, a directory `armature cert init` fills)."""
    ports = [free_port() for _ in range(2)]
    worker = (f'workers = [{{ device = "cpu", role = "aggregated", kv_blocks = 2048, '
              f'max_batch = {max_batch}, max_queue = 64 }}]')
    head = f"""
[cluster]
name = "bench-serve"
cookie = "bench-serve"

[model]
source = "{model}"
name = "{MODEL_NAME}"
""" + (f'\n[transport]\ncerts = "{certs}"\n' if certs else "")
    gateway = f'\n[[nodes]]\nname = "gw"\ncontrol = "127.0.0.1:{ports[0]}"\ngateway = "127.0.0.1:{port}"\n' \
              'roles = ["gateway", "router"]\n'
    if not two_nodes:
        return head + gateway + worker + "\n"
    return head + gateway + f'\n[[nodes]]\nname = "w"\ncontrol = "127.0.0.1:{ports[1]}"\n' + worker + "\n"


def run_armature(label, model, two_nodes, args, out_dir, binary=None, tls=False):
    port = free_port()
    cfg = os.path.join(out_dir, f"{label}.toml")
    certs = os.path.join(out_dir, f"{label}-certs") if tls else None
    with open(cfg, "w") as f:
        f.write(armature_config(model, port, two_nodes, args.max_batch, certs))
    binary = binary or args.bin
    if certs:
        # The CA's key goes beside the directory, inside this run's folder.
        subprocess.run([binary, "cert", "init", "--config", cfg], check=True, stdout=subprocess.DEVNULL)
    log_name = os.path.join(out_dir, f"{label}.log")
    env = dict(os.environ, ARMATURE_THREADS=str(args.threads), RUST_LOG="warn")
    cmd = [binary, "launch", "--config", cfg] if two_nodes else [binary, "serve", "--config", cfg]
    with open(log_name, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    try:
        wait_healthy(port, 1, label, log_name, timeout=180)
        return measure(label, port, args)
    finally:
        stop_node(proc)


def llama_ready(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def run_llama(server, model, args, out_dir):
    port = free_port()
    slots = max(args.concurrency)
    log_name = os.path.join(out_dir, "llama-server.log")
    cmd = [server, "-m", model, "--port", str(port), "--host", "127.0.0.1", "-t", str(args.threads),
           "-tb", str(args.threads), "-np", str(slots), "-c", str(slots * (args.tokens + 128)), "--no-webui"]
    with open(log_name, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        deadline = time.time() + 120
        while not llama_ready(port):
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"llama-server did not start (see {log_name})")
            time.sleep(0.5)
        return measure("llama-server", port, args)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_engine(model, args, prompt_tokens):
    """`armature bench engine` at the same concurrencies, lengths and sampling: {streams: figures}."""
    cmd = [args.bin, "bench", "engine", "--model", model, "--concurrency", ",".join(map(str, args.concurrency)),
           "--prompt-tokens", str(prompt_tokens), "--max-tokens", str(args.tokens), "--prefill-tokens", "64",
           "--repeats", str(args.repeats), "--temperature", str(args.temperature), "--top-p", str(args.top_p)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, ARMATURE_THREADS=str(args.threads)))
    report = json.loads(out.stdout.strip().splitlines()[-1])
    figures = {d["concurrency"]: {"aggregate_tok_s": d["aggregate_tok_s"], "stream_decode_tok_s": d["per_stream_tok_s"]}
               for d in report["decode"]}
    for c, f in figures.items():
        print(f"  engine x{c}: {f['aggregate_tok_s']:.1f} tok/s aggregate, {f['stream_decode_tok_s']:.1f} a stream",
              flush=True)
    return figures


def find_llama_server(given):
    """--llama-server, $LLAMA_SERVER, what bench/llama_server.sh built, or one on PATH."""
    built = sorted(glob.glob(os.path.join(ROOT, "target", "llama-server", "*", "vendor", "llama.cpp", "build", "bin",
                                          "llama-server")))
    for candidate in (given, os.environ.get("LLAMA_SERVER"), *built[-1:], shutil.which("llama-server")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=BIN)
    ap.add_argument("--model", help="a GGUF file (default: `armature model fetch`)")
    ap.add_argument("--llama-server", help="the llama-server binary (else $LLAMA_SERVER, else PATH)")
    ap.add_argument("--threads", type=int, default=2, help="compute threads of every server")
    ap.add_argument("--concurrency", default="1,16", help="streams at once, comma-separated")
    ap.add_argument("--tokens", type=int, default=128, help="completion tokens per stream")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="every request's temperature (0: greedy, as `armature bench engine` decodes)")
    ap.add_argument("--top-p", type=float, default=1.0, help="every request's top_p")
    ap.add_argument("--max-batch", type=int, default=16, help="armature's max_batch (llama-server gets as many slots)")
    ap.add_argument("--baseline-bin", help="another armature binary (say, main's) served one-node beside this one")
    ap.add_argument("--only", default="engine,armature,two-node,two-node-tls,llama-server",
                    help="which of engine, armature, two-node (plaintext control plane), two-node-tls (mutual "
                         "TLS between the nodes), llama-server to run")
    ap.add_argument("--out", help="a folder for the configs, logs and JSON (default: a temporary one)")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.sampling = {"temperature": args.temperature, "top_p": args.top_p}
    only = set(args.only.split(","))
    model = args.model or default_model(args.bin)
    model = os.path.abspath(model)
    out_dir = args.out or tempfile.mkdtemp(prefix="armature-bench-serve-")
    os.makedirs(out_dir, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{time.strftime('%Y-%m-%d')} on {cpu}, {os.cpu_count()} CPUs; {args.threads} compute threads; "
          f"{args.tokens} tokens a stream, medians of {args.repeats}; logs in {out_dir}", flush=True)
    results = {}
    if args.baseline_bin:
        results["baseline"] = run_armature("baseline", model, False, args, out_dir, args.baseline_bin)
    if "armature" in only:
        results["armature"] = run_armature("armature", model, False, args, out_dir)
    if "two-node" in only:
        results["two-node"] = run_armature("two-node", model, True, args, out_dir)
    if "two-node-tls" in only:
        results["two-node-tls"] = run_armature("two-node-tls", model, True, args, out_dir, tls=True)
    if "engine" in only:
        # The chat prompt's length as the server counted it, so that both attend over as much.
        served = results.get("armature") or results.get("two-node") or results.get("two-node-tls") or {}
        prompt = int(next(iter(served.values()))["prompt_tokens"]) if served else 48
        results["engine"] = run_engine(model, args, prompt)
    server = find_llama_server(args.llama_server)
    if "llama-server" in only:
        if server:
            results["llama-server"] = run_llama(server, model, args, out_dir)
        else:
            print("  llama-server: not found (bench/llama_server.sh builds it); left out", flush=True)

    names = [n for n in ("baseline", "armature", "two-node", "two-node-tls", "llama-server") if n in results]
    print()
    print("| streams | server | aggregate tok/s | stream decode tok/s | TTFT p50 / p90 | ITL p50 / p90 | against |")
    print("|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        if "engine" in results:
            e = results["engine"][c]
            print(f"| {c} | engine (no HTTP) | {e['aggregate_tok_s']:.1f} | {e['stream_decode_tok_s']:.1f} | | | |")
        for n in names:
            f = results[n][c]
            against = []
            if "engine" in results:
                e = results["engine"][c]
                key = "stream_decode_tok_s" if c == 1 else "aggregate_tok_s"
                against.append(f"{f[key] / e[key]:.2f}x engine")
            if n == "armature" and "baseline" in results:
                against.append(f"{f['aggregate_tok_s'] / results['baseline'][c]['aggregate_tok_s']:.2f}x baseline")
            if n.startswith("two-node") and "armature" in results:
                against.append(f"{f['aggregate_tok_s'] / results['armature'][c]['aggregate_tok_s']:.2f}x one node")
            if n != "llama-server" and "llama-server" in results:
                against.append(f"{f['aggregate_tok_s'] / results['llama-server'][c]['aggregate_tok_s']:.2f}x llama-server")
            print(f"| {c} | {n} | {f['aggregate_tok_s']:.1f} | {f['stream_decode_tok_s']:.1f} | "
                  f"{f['ttft_p50_ms']:.0f} / {f['ttft_p90_ms']:.0f} ms | {f['itl_p50_ms']:.1f} / {f['itl_p90_ms']:.1f} ms "
                  f"| {', '.join(against)} |")
    with open(os.path.join(out_dir, "serve.json"), "w") as f:
        json.dump({"cpu": cpu, "threads": args.threads, "tokens": args.tokens, "results": results}, f, indent=1)
    print(json.dumps({"cpu": cpu, "results": results}))


if __name__ == "__main__":
    sys.exit(main())
