#!/usr/bin/env bash
# Every GPU check of the CUDA backend in one run, on a machine with an NVIDIA GPU (no Rust
# toolchain needed there: the binaries are built elsewhere with `--features cuda`).
#
#   bench/cuda.sh ARMATURE GPU_TESTS MODEL.gguf OUT
#
# 1. the gpu crate's CUDA tests with ARMATURE_GPU_TESTS=1: discovery, NVRTC, the sampling
#    kernels, golden logits against the CPU backend, mixed batches, KV blocks between backends,
#    the engine sampling on the device, KV blocks copied device to device between two executors;
# 2. `armature bench engine --device cuda:0`: decode at batch 1, 16 and 64, prefill of 2k tokens;
#    then the same without CUDA graphs and tiled prefill attention;
# 3. the same weights exported with `armature model export --hf`, under PyTorch + transformers
#    `generate` (bench/cuda_torch.py), sdpa and eager attention.
set -uo pipefail
bin=$1 tests=$2 model=$3 out=$4
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)

. "$here/cuda_libs.sh" "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"

echo "== tests" | tee "$out/tests.log"
ARMATURE_GPU_TESTS=1 ARMATURE_REQUIRE_NVRTC=1 ARMATURE_TEST_MODEL="$model" RUST_BACKTRACE=1 \
  timeout 300 "$tests" cuda:: --test-threads 1 --nocapture 2>&1 | tee -a "$out/tests.log"

echo "== armature bench engine --device cuda:0" | tee "$out/bench.log"
timeout 240 "$bin" bench engine --model "$model" --device cuda:0 --concurrency 1,16,64 \
  --prompt-tokens 128 --max-tokens 128 --prefill-tokens 2048 --repeats 3 2>&1 | tee -a "$out/bench.log"

echo "== the same, without CUDA graphs (decode) and tiled attention (prefill)" | tee -a "$out/bench.log"
ARMATURE_CUDA_GRAPHS=0 ARMATURE_CUDA_TILED_ATTENTION=0 timeout 240 "$bin" bench engine --model "$model" \
  --device cuda:0 --concurrency 1,16,64 --prompt-tokens 128 --max-tokens 128 --prefill-tokens 2048 --repeats 3 2>&1 \
  | tee -a "$out/bench.log"

echo "== pytorch" | tee "$out/torch.log"
timeout 60 "$bin" model export --hf /tmp/armature-hf --model "$model" 2>&1 | tail -2 | tee -a "$out/torch.log"
for attention in sdpa eager; do
  PYTHONUNBUFFERED=1 timeout 240 python3 "$here/cuda_torch.py" --hf /tmp/armature-hf --attention $attention \
    --batch 1,16,64 --prompt-tokens 128 --max-tokens 128 --prefill-tokens 2048 --repeats 3 2>&1 \
    | grep -v Warning | tee -a "$out/torch.log"
done
