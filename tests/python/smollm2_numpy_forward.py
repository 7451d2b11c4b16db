"""Adds exact f32 numpy logits (numpy_forward.py's forward pass) to the SmolLM2 reference.

Usage: python smollm2_numpy_forward.py MODEL.gguf IN_OUT.json
Reads the `logits` cases of the reference JSON and adds `numpy_last_logits` (full vocabulary,
rounded to 1e-4) to each.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from numpy_forward import Model  # noqa: E402

model_path, ref_path = sys.argv[1], sys.argv[2]
model = Model(model_path)
ref = json.load(open(ref_path))
for case in ref["logits"]:
    case["numpy_last_logits"] = [round(float(v), 4) for v in model.forward(case["ids"])]
with open(ref_path, "w") as f:
    json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
print("added numpy logits for", len(ref["logits"]), "prompts")
