"""The tiny models' Hugging Face exports run through Transformers itself, against the numpy forward
pass that CI uses (`numpy_forward.py`): a second, independent reference for the families, run by
hand (Transformers needs torch, too large for CI).

Usage (a venv with `pip install torch transformers safetensors numpy gguf`):
    for a in llama qwen2 qwen3 gemma gemma2 gemma3 mixtral qwen3moe phi3; do
        armature model tiny --arch $a --out DIR/$a.gguf --seed 11
        armature model export --hf DIR/$a-hf --model DIR/$a.gguf
    done
    python tests/python/transformers_check.py DIR llama qwen2 qwen3 gemma gemma2 gemma3 mixtral qwen3moe phi3

Prints, per family and prompt, the largest difference of the last position's logits. Two prompts:
70 tokens (past the tiny Phi-3's original context of 64, where Transformers takes LongRoPE's long
factors as we do) and 9 (where Transformers takes the short ones and we, serving 512 positions,
the long ones: Phi-3 differs there by design, see docs/models.md#longrope-phi-3).
"""

import json
import os
import subprocess
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

torch.set_grad_enabled(False)
folder, archs = sys.argv[1], sys.argv[2:]
here = os.path.dirname(os.path.abspath(__file__))
prompts = [[1] + [(7 * i + 3) % 267 for i in range(69)], [1, 88, 260, 30, 71, 266, 4, 50, 2]]
for arch in archs:
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(folder, f"{arch}-hf"), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    for ids in prompts:
        theirs = model(torch.tensor([ids])).logits[0, -1].numpy().astype(np.float64)
        ours = np.array(json.loads(subprocess.check_output(
            [sys.executable, os.path.join(here, "numpy_forward.py"), os.path.join(folder, f"{arch}.gguf"), json.dumps(ids)]
        )))
        print(f"{arch:9s} {len(ids):3d} tokens: max |transformers - numpy| {np.abs(theirs - ours).max():.2e}", flush=True)
