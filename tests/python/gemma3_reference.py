"""Reference outputs for Gemma 3 270M (pretrained, Q4_K_M GGUF) from llama.cpp, written to
tests/reference/gemma3_270m.json.

Usage (once; the output is committed, the model is not):
    pip install llama-cpp-python==0.3.36 numpy
    cargo test --test gemma3_270m        # fetches the GGUF into target/tmp/model-cache
    python tests/python/gemma3_reference.py target/tmp/model-cache/gemma-3-270m-q4_k_m.gguf \
        tests/reference/gemma3_270m.json

Tokenization (SentencePiece with byte fallback and no space prefix), greedy decoding and logits
come from llama.cpp (llama-cpp-python, 2 threads); a prompt of 600 tokens crosses the 512-position
window of the model's sliding layers.
"""

import json
import sys

import llama_cpp
from llama_cpp import Llama
from llama_cpp_common import greedy, logits_of, tokenize_texts, top

model_path, out_path = sys.argv[1], sys.argv[2]
llm = Llama(model_path=model_path, n_ctx=1024, n_threads=2, logits_all=True, verbose=False, seed=0)

TEXTS = tokenize_texts("<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n")


def tokenize(text, bos=False):
    return llm.tokenize(text.encode(), add_bos=bos, special=True)


out = {
    "model_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    "llama_cpp_python": llama_cpp.__version__,
    "tokenize": [{"text": t, "ids": tokenize(t)} for t in TEXTS],
}

prompt_ids = tokenize("Question: What is the capital of France?\nAnswer:", bos=True)
out["greedy"] = greedy(llm, prompt_ids, 16)

# A long prompt: numbered sentences until it passes 600 tokens.
long_text, n = "", 0
while len(tokenize(long_text, bos=True)) < 600:
    n += 1
    long_text += f"Sentence {n} says that the number {n} comes after {n - 1}. "

out["logits"] = []
for text in [
    "The capital of France is",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):\n    ",
    long_text,
]:
    ids = tokenize(text, bos=True)
    rows = logits_of(llm, ids)
    out["logits"].append({"text": text, "ids": ids, "last_top20": top(rows[-1])})

with open(out_path, "w") as f:
    json.dump(out, f, ensure_ascii=False, indent=1)
print(f"wrote {out_path}: {len(out['tokenize'])} tokenizations, greedy {out['greedy']['text']!r}")
