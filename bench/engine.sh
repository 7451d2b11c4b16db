#!/usr/bin/env bash
# Armature's engine beside llama.cpp on the same GGUF (SmolLM2-135M-Instruct Q4_1), same machine,
# same run, 2 threads. Needs a release build and llama-cpp-python (pip install llama-cpp-python==0.3.36).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODEL=$(./target/release/armature model fetch)
echo "== armature bench engine"
./target/release/armature bench engine --model "$MODEL" --concurrency 1,4,16 --prompt-tokens 16 --max-tokens 64 --prefill-tokens 512 --repeats 5
echo "== llama.cpp (llama-cpp-python)"
"$PY" bench/llama_cpp_bench.py "$MODEL" --threads 2 --prefill 512 --tokens 64 --repeats 5
