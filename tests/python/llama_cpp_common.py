"""What the llama.cpp reference scripts share: logits of a prompt, the top entries of a row, and
greedy tokens, from a llama-cpp-python `Llama` made with `logits_all=True`."""

import numpy as np


def tokenize_texts(chat_turn):
    """The texts whose token ids a reference records: words, numbers, whitespace runs, accents, CJK
    and an emoji, contractions, the empty text, and `chat_turn` (a user turn in the model's own
    markers, then the opening of the reply)."""
    return [
        "The capital of France is",
        "Hello, world!",
        "12345 and 3.14159",
        "  leading and   inner   spaces\n\n\ttabs",
        "héllo wörld — 日本語 🙂",
        chat_turn,
        "don't won't it's I'M",
        "",
    ]


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
