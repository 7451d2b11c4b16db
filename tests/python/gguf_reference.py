"""Write a GGUF file with llama.cpp's own Python package (gguf) and the values it decodes to.

Usage: python gguf_reference.py OUT.gguf OUT.json
The Rust reader must decode every tensor to these values (the reference is gguf's numpy
dequantizer, independent of our code).
"""

import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants

out_gguf, out_json = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(1234)

w = GGUFWriter(out_gguf, arch="llama")
w.add_uint32("test.u32", 4096)
w.add_int32("test.i32", -7)
w.add_float32("test.f32", 1e-5)
w.add_bool("test.bool", True)
w.add_string("test.string", "héllo")
w.add_array("test.strings", ["<s>", "</s>", "Ġthe"])
w.add_array("test.ints", [1, 2, 3])

expected = {}
shapes = {"F32": (3, 5), "F16": (4, 8), "BF16": (2, 16), "Q8_0": (3, 64), "Q4_0": (2, 96), "Q4_1": (5, 32)}
for name, shape in shapes.items():
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    qtype = T[name]
    if qtype == T.F32:
        data, ref = x, x
    elif qtype == T.F16:
        data = x.astype(np.float16)
        ref = data.astype(np.float32)
    else:
        data = quants.quantize(x, qtype)
        ref = quants.dequantize(data, qtype)
    w.add_tensor(f"t.{name}", data, raw_dtype=qtype)
    expected[f"t.{name}"] = {"type": name, "shape": list(shape), "values": ref.reshape(-1).astype(float).tolist()}

# k-quants: gguf cannot quantize to these, so the blocks are random bytes with sane f16 scales,
# and gguf's dequantizer gives the reference values.
for name, (shape, block_bytes, scale_at) in {"Q4_K": ((2, 512), 144, (0, 2)), "Q6_K": ((3, 256), 210, (208,))}.items():
    qtype = T[name]
    blocks = rng.integers(0, 256, size=(shape[0] * shape[1] // 256, block_bytes), dtype=np.uint8)
    for at in scale_at:
        blocks[:, at : at + 2] = np.frombuffer(
            rng.uniform(0.01, 0.1, size=len(blocks)).astype(np.float16).tobytes(), dtype=np.uint8
        ).reshape(-1, 2)
    data = blocks.reshape(shape[0], -1)
    ref = quants.dequantize(data, qtype)
    assert ref.shape == shape, ref.shape
    w.add_tensor(f"t.{name}", data, raw_dtype=qtype)
    expected[f"t.{name}"] = {"type": name, "shape": list(shape), "values": ref.reshape(-1).astype(float).tolist()}

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
with open(out_json, "w") as f:
    json.dump(expected, f)
