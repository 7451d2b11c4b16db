"""What the llama.cpp reference scripts share: logits of a prompt, the top entries of a row, and
greedy tokens, from a llama-cpp-python `Llama` made with `logits_all=True`."""

import numpy as np


def logits_of(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def top(row, k=20):
    idx = np.argsort(-row)[:k]
    return [[int(i), float(row[i])] for i in idx]


def greedy(llm, prompt_ids, n):
    """The first `n` greedy tokens after `prompt_ids`, and their text."""
    tokens = []
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        tokens.append(int(tok))
        if len(tokens) == n:
            break
    return {"prompt_ids": prompt_ids, "tokens": tokens, "text": llm.detokenize(tokens).decode(errors="replace")}
