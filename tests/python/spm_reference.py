"""SentencePiece itself as the reference for our SentencePiece BPE tokenizer (Llama 2, Mistral).

Trains a small BPE model with byte fallback and Llama's settings (identity normalisation, a dummy
prefix, whitespace kept as is) on a built-in corpus, then prints one JSON object: the pieces
(text, score, GGUF token type) and, for each test text, SentencePiece's ids and decoded text.
With a directory argument it also converts the model to a Hugging Face `tokenizer.json` there
(transformers' LlamaTokenizerFast, as Llama 2 and Mistral folders carry one) and adds, per text,
that tokenizer's ids.

Usage: python spm_reference.py [HF_DIR]
"""

import io
import json
import os
import sys

import sentencepiece as spm

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world! Hello there, general Kenobi.",
    "Tokenizers split text into pieces; pieces merge by score.",
    "In 1969, 3 astronauts flew 384400 km to the Moon and back.",
    "def main():\n    print('hello')\n    return 0\n",
    "the thin sea, the thick sand, the then and the there",
] * 20

TEXTS = [
    "The capital of France is",
    "Hello world!",
    "  two leading spaces and  a double",
    "line one\nline two\n\tindented",
    "numbers 12345 and 3.14",
    "unknown: 日本語 and émoji 🙂",
    "x",
    "",
]

# GGUF token types, as llama.cpp's convert script assigns them.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

model = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(CORPUS),
    model_writer=model,
    model_type="bpe",
    vocab_size=400,
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    split_digits=True,
    character_coverage=1.0,
    minloglevel=2,
)
sp = spm.SentencePieceProcessor(model_proto=model.getvalue())


def kind(i):
    if sp.IsUnknown(i):
        return UNKNOWN
    if sp.IsControl(i):
        return CONTROL
    if sp.IsByte(i):
        return BYTE
    if sp.IsUnused(i):
        return UNUSED
    return NORMAL


pieces = [[sp.IdToPiece(i), sp.GetScore(i), kind(i)] for i in range(sp.GetPieceSize())]
cases = [{"text": t, "ids": sp.EncodeAsIds(t), "decoded": sp.DecodeIds(sp.EncodeAsIds(t))} for t in TEXTS]
if len(sys.argv) > 1:
    from transformers import LlamaTokenizerFast

    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    hf = LlamaTokenizerFast(
        vocab_file=os.path.join(out, "tokenizer.model"), legacy=False, from_slow=True, add_prefix_space=True
    )
    hf.save_pretrained(out)
    for c in cases:
        c["hf_ids"] = hf.encode(c["text"], add_special_tokens=False)
        c["hf_decoded"] = hf.decode(c["hf_ids"])
print(json.dumps({"pieces": pieces, "bos": sp.bos_id(), "eos": sp.eos_id(), "cases": cases}))
