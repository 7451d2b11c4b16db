#!/usr/bin/env bash
# A mixture of experts against a dense model of the same size, on the CPU engine (docs/benchmarks.md#mixture-of-experts).
# Both are generated (`armature model tiny`): 4 layers of 512 hidden units; the mixture has 4 experts of 1,024 units,
# 2 used a token; the dense model one MLP of 4,096 units, so both hold the same weights (114 MB, f32).
# Usage: bench/moe.sh [REPEATS]   (after `cargo build --release`)
set -euo pipefail
bin=${ARMATURE_BIN:-target/release/armature}
repeats=${1:-3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" model tiny --arch mixtral --hidden 512 --ffn 1024 --layers 4 --out "$dir/moe.gguf" >/dev/null
"$bin" model tiny --arch llama --hidden 512 --ffn 4096 --layers 4 --out "$dir/dense.gguf" >/dev/null
lscpu | grep 'Model name'
for m in moe dense; do
  echo "== $m"
  "$bin" bench engine --model "$dir/$m.gguf" --concurrency 1,16 --repeats "$repeats" --max-tokens 64 --prefill-tokens 256 \
    | grep -E '^(prefill|decode)'
done
