"""Helpers shared by the end-to-end benchmark scripts: where the release binary is, a prompt of
random words, and a small HTTP client for a node's gateway. Standard library only."""
import json
import os
import random
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


def healthy(port, workers=1):
    """The gateway answers /health with 200 and sees at least `workers` workers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200 and len(json.loads(r.read())["workers"]) >= workers
    except Exception:
        return False
