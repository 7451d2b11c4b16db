"""PyTorch + transformers `generate` on the same weights as `armature bench engine --device cuda:0`
(the GGUF exported with `armature model export --hf`): decode tok/s at each batch size and prefill
tok/s for one long prompt, measured like the engine bench (decode excludes the first step), fp16,
no torch.compile. Prints one JSON line.

    python3 bench/cuda_torch.py --hf DIR --batch 1,16,64 --prompt-tokens 128 --max-tokens 128
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attention", default="sdpa", help="sdpa or eager")
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float16, attn_implementation=a.attention)
    model = model.cuda().eval()
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)

    def generate(ids, n):
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )

    # Warm up kernels and the allocator.
    warm = torch.randint(3, vocab, (2, 32), generator=gen).cuda()
    generate(warm, 8)

    prefill = []
    for _ in range(a.repeats):
        ids = torch.randint(3, vocab, (1, a.prefill_tokens), generator=gen).cuda()
        prefill.append(a.prefill_tokens / timed(lambda: generate(ids, 1)))
    decode = []
    for b in [int(x) for x in a.batch.split(",")]:
        runs = []
        for _ in range(a.repeats):
            ids = torch.randint(3, vocab, (b, a.prompt_tokens), generator=gen).cuda()
            first = timed(lambda: generate(ids, 1))
            whole = timed(lambda: generate(ids, a.max_tokens))
            runs.append(b * (a.max_tokens - 1) / max(whole - first, 1e-9))
        decode.append({"concurrency": b, "aggregate_tok_s": statistics.median(runs)})
    print(
        json.dumps(
            {
                "engine": f"pytorch {torch.__version__} transformers generate fp16 {a.attention}",
                "device": torch.cuda.get_device_name(0),
                "prefill_tokens": a.prefill_tokens,
                "prefill_tok_s": statistics.median(prefill),
                "decode": decode,
            }
        )
    )


if __name__ == "__main__":
    main()
