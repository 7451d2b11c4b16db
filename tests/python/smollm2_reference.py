"""Reference outputs for SmolLM2-135M-Instruct (Q4_1 GGUF) from llama.cpp and Hugging Face's
chat-template rendering, written to tests/reference/smollm2.json.

Usage (once; the output is committed, the model is not):
    pip install llama-cpp-python==0.3.36 jinja2 numpy
    armature model fetch --cache-dir target/tmp/model-cache
    python tests/python/smollm2_reference.py target/tmp/model-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        tests/reference/smollm2.json

Tokenization, greedy decoding and logits come from llama.cpp (llama-cpp-python, 2 threads). Chat
prompts are rendered the way transformers' apply_chat_template does: jinja2's sandboxed
environment with trim_blocks and lstrip_blocks, `raise_exception`, and bos/eos token strings.
"""

import json
import sys

import jinja2
import llama_cpp
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import Llama
from llama_cpp_common import greedy, logits_of, tokenize_texts, top

model_path, out_path = sys.argv[1], sys.argv[2]
llm = Llama(model_path=model_path, n_ctx=1024, n_threads=2, logits_all=True, verbose=False, seed=0)
meta = llm.metadata

TEXTS = tokenize_texts("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def tokenize(text):
    return llm.tokenize(text.encode(), add_bos=False, special=True)


def render(messages, add_generation_prompt):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    tokens = [llm.detokenize([i], special=True).decode() for i in range(3)]
    bos = tokens[int(meta["tokenizer.ggml.bos_token_id"])]
    eos = tokens[int(meta["tokenizer.ggml.eos_token_id"])]
    template = env.from_string(meta["tokenizer.chat_template"])
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)


CHATS = [
    ([{"role": "user", "content": "Hi"}], True),
    (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"},
        ],
        True,
    ),
    ([{"role": "user", "content": "No prompt after me."}], False),
]


out = {
    "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "llama_cpp_python": llama_cpp.__version__,
    "tokenize": [{"text": t, "ids": tokenize(t)} for t in TEXTS],
    "chat": [{"messages": m, "add_generation_prompt": g, "prompt": render(m, g)} for m, g in CHATS],
}

prompt_ids = tokenize("The capital of France is")
out["greedy"] = greedy(llm, prompt_ids, 16)

out["logits"] = []
for text in ["The capital of France is", out["chat"][1]["prompt"], "def fibonacci(n):\n    "]:
    ids = tokenize(text)
    rows = logits_of(llm, ids)
    out["logits"].append({"text": text, "ids": ids, "last_top20": top(rows[-1]), "positions_top5": [top(r, 5) for r in rows]})

with open(out_path, "w") as f:
    json.dump(out, f, ensure_ascii=False, indent=1)
print(f"wrote {out_path}: {len(out['tokenize'])} tokenizations, {len(out['chat'])} chats, greedy {out['greedy']['text']!r}")
