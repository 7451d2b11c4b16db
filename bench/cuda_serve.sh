#!/usr/bin/env bash
# The serving path on a machine with an NVIDIA GPU (no Rust toolchain needed there: the binaries
# are built elsewhere with `--features cuda`):
#
#   bench/cuda_serve.sh ARMATURE GPU_TESTS MODEL.gguf OUT
#
# 1. the gpu crate's CUDA tests (ARMATURE_GPU_TESTS=1): discovery, NVRTC, kernels, golden logits
#    against the CPU backend, tiled against per-row prefill attention, graphs, KV blocks;
# 2. bench/cuda_serve.py: `armature launch` with one aggregated worker on cuda:0, then on the CPU:
#    greedy chat completions, a streamed one, concurrent HTTP load.
set -uo pipefail
bin=$1 tests=$2 model=$3 out=$4
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
. "$here/cuda_libs.sh" "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

echo "== tests" | tee "$out/tests.log"
ARMATURE_GPU_TESTS=1 ARMATURE_REQUIRE_NVRTC=1 ARMATURE_TEST_MODEL="$model" RUST_BACKTRACE=1 \
  timeout 300 "$tests" cuda:: --test-threads 1 2>&1 | tee -a "$out/tests.log"

echo "== serve" | tee "$out/serve.log"
timeout 400 python3 "$here/cuda_serve.py" --bin "$bin" --model "$model" --out "$out/serve" 2>&1 | tee -a "$out/serve.log"
