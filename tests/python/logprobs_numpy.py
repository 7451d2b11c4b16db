"""Log probabilities served through the official `openai` client against the f32 numpy forward
pass of SmolLM2 (`tests/reference/smollm2.json`, from `smollm2_numpy_forward.py`).

Usage: python logprobs_numpy.py BASE_URL MODEL REFERENCE_JSON TOLERANCE
For each reference prompt (sent as its token ids): the generated token's top-5 log probabilities,
and, with `echo`, the score of a prompt that ends in numpy's most likely next token, each within
TOLERANCE of numpy's log-softmax. The last line printed is a summary the Rust test reads.
"""

import json
import math
import sys

import openai
from e2e_checks import check, summary

base_url, model, reference_path, tolerance = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
with open(reference_path) as f:
    cases = json.load(f)["logits"]


def log_softmax(logits):
    top = max(logits)
    z = top + math.log(sum(math.exp(l - top) for l in logits))
    return [l - z for l in logits]


@check("generated-logprobs")
def _():
    for case in cases:
        want = log_softmax(case["numpy_last_logits"])
        r = client.completions.create(model=model, prompt=case["ids"], max_tokens=1, temperature=0, logprobs=5)
        lp = r.choices[0].logprobs
        got = sorted(lp.top_logprobs[0].values(), reverse=True)
        best = sorted(want, reverse=True)[:5]
        worst = max(abs(g - w) for g, w in zip(got, best))
        print(f"{case['text'][:12]!r}: top-5 log probabilities vs numpy: {worst:.5f}", file=sys.stderr)
        assert len(got) == 5 and worst < tolerance, (got, best)
        assert abs(lp.token_logprobs[0] - got[0]) < 1e-6, "greedy: the chosen token is the most likely"


@check("prompt-scores")
def _():
    for case in cases:
        want = log_softmax(case["numpy_last_logits"])
        best = max(range(len(want)), key=want.__getitem__)
        r = client.completions.create(model=model, prompt=case["ids"] + [best], max_tokens=0, echo=True, logprobs=1)
        lp = r.choices[0].logprobs
        assert len(lp.token_logprobs) == len(case["ids"]) + 1 and lp.token_logprobs[0] is None, lp
        off = abs(lp.token_logprobs[-1] - want[best])
        print(f"{case['text'][:12]!r}: echoed last token's score vs numpy: {off:.5f}", file=sys.stderr)
        assert off < tolerance, (lp.token_logprobs[-1], want[best])


summary()
