#!/usr/bin/env bash
# How often the default model answers a question right at given [model.sampling] defaults: for
# each candidate, `armature serve` with that section, then RUNS chat requests with no sampling
# fields, counting the answers that contain WANT (any case). Not part of the test suite.
#
#   bench/sampling_defaults.sh [RUNS] [QUESTION] [WANT]
#
# Uses ARMATURE_BIN, else the newer of target/release/armature and target/debug/armature; the
# model cache is ARMATURE_CACHE_DIR (default ./cache). Example (2026-12-02, the README's first request):
#   bench/sampling_defaults.sh 20 "What is the capital of France? Answer in one sentence." Paris
set -euo pipefail
runs=${1:-20}
question=${2:-"What is the capital of France? Answer in one sentence."}
want=${3:-Paris}
bin=${ARMATURE_BIN:-$(ls -t target/release/armature target/debug/armature 2> /dev/null | head -1)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19300
for candidate in "temperature = 1.0" "temperature = 0.6|top_p = 0.9" "temperature = 0.4|top_p = 0.9" "temperature = 0.6|min_p = 0.1"; do
  port=$((port + 2))
  cat > "$work/c.toml" <<T
[cluster]
name = "sampling-defaults"
cookie = "a-cookie-for-measuring"
[model]
source = "default"
[model.sampling]
$(echo "$candidate" | tr '|' '\n')
[[nodes]]
name = "n0"
control = "127.0.0.1:$((port + 1))"
gateway = "127.0.0.1:$port"
roles = ["gateway", "router"]
workers = [{ device = "cpu", role = "aggregated", kv_blocks = 2048 }]
T
  "$bin" serve --config "$work/c.toml" > "$work/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do curl -sf "localhost:$port/health" > /dev/null && break; sleep 0.5; done
  curl -sf "localhost:$port/health" > /dev/null || { cat "$work/serve.log"; exit 1; }
  body=$(python3 -c 'import json,sys; print(json.dumps({"model": "SmolLM2-135M-Instruct", "max_tokens": 32, "messages": [{"role": "user", "content": sys.argv[1]}]}))' "$question")
  right=0
  for _ in $(seq 1 "$runs"); do
    answer=$(curl -s "localhost:$port/v1/chat/completions" -H 'content-type: application/json' -d "$body" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')
    if grep -qi "$want" <<< "$answer"; then right=$((right + 1)); fi
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "${candidate//|/, }: $right/$runs contain \"$want\""
done
