"""Helpers shared by the end-to-end benchmark scripts: where the release binary is, a prompt of
random words, and a small HTTP client for a node's gateway (completions, health, metrics). Standard library only."""
import json
import os
import random
import signal
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "armature")
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def words(seed, n):
    """A document of `n` random words, the same for the same seed."""
    rng = random.Random(seed)
    return f"Document {seed}: " + " ".join(rng.choice(WORDS) for _ in range(n))


def post(port, body, timeout=600):
    """POST a completion request; the parsed response."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def metrics(port):
    """The gateway's /metrics as {(name, labels): value}, labels as {key: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = tuple(sorted(tuple(kv.split("=", 1)) for kv in labels.rstrip("}").split(",") if "=" in kv))
        out[(name, tuple((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


def metric_sum(sample, name, **labels):
    """The sum of `name` over the series whose labels include `labels`."""
    return sum(v for (n, ls), v in sample.items() if n == name and set(labels.items()) <= set(ls))


def healthy(port, workers=1):
    """The gateway answers /health with 200 and sees at least `workers` workers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200 and len(json.loads(r.read())["workers"]) >= workers
    except Exception:
        return False


def wait_healthy(port, workers, what, log_name, timeout=120):
    """Wait for `healthy(port, workers)`; exit naming `what` and its log if it never comes."""
    deadline = time.time() + timeout
    while not healthy(port, workers):
        if time.time() > deadline:
            raise SystemExit(f"{what} did not start (see {log_name})")
        time.sleep(0.5)


def stop_node(proc):
    """SIGTERM a node (it drains), SIGKILL it if it is still there after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def default_model(binary=BIN):
    """The default model's GGUF path (`armature model fetch`, which downloads it on first use)."""
    out = subprocess.run([binary, "model", "fetch"], check=True, capture_output=True, text=True, cwd=ROOT)
    return os.path.join(ROOT, out.stdout.strip().splitlines()[-1])
