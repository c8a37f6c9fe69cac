#!/usr/bin/env bash
# Issue 42 on the GPU: TensorRT-LLM's published end-to-end workloads (tech blog 17) on our engine, rocket-bench sweep
# per method and concurrency, a part per device call (each under the 10-minute limit), from the repo root with .whl
# carried:   PARTS="llama8k-rocket" bash benchmarks/e2e_gpu.sh
# Parts (estimated H200 minutes; a 32k prefill is ~1.2 s, so the largest batches are split off):
#   llama8k-rocket llama8k-dense            8k/1k, concurrency 1 4 16 64 max, Llama-3.1-8B (~6 and ~5)
#   llama32k-rocket-low llama32k-rocket-64 llama32k-rocket-max   32k/4k RocketKV (~4, ~5, ~8)
#   llama32k-dense-low llama32k-dense-max                        32k/4k dense: 1 4, then 16 max (~3, ~8)
#   llama32k-fp8kv-max                      32k/4k RocketKV with an FP8 KV cache, its largest batch (~8)
#   qwen32k-rocket-low qwen32k-rocket-64 qwen32k-rocket-max qwen32k-dense-low qwen32k-dense-max   Qwen3-8B, 32k/4k
#   kt-runs          issue 42's hypothesis: the KT bounds pass at 124 requests with 32-, 64- and 128-byte runs
#                    (benchmarks/experiments/stage2_batch.py; ~2)
#   served-32k       rocket-serve at RocketKV's 32k/4k largest batch for ~8 minutes, 10% of the clients leaving
#                    mid-stream, --check (no 5xx, no KV block in use once idle); CONCURRENCY= the offline capacity
# Each sweep part writes $OUT/PART.json; merge a workload's parts afterwards (no GPU):
#   rocket-bench sweep --from-json llama8k-*.json --json e2e-llama-8k.json --plot e2e-llama-8k.png
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh || exit 1
R=configs/rocket.yaml D=configs/dense.yaml
sweep() {  # part arch input output seconds sweep-args...
  local part=$1 arch=$2 input=$3 output=$4 limit=$5; shift 5
  echo "== $part"
  timeout "$limit" python3 -m rocket_trtllm.bench --arch "$arch" --random-weights sweep --input-len "$input" \
    --output-len "$output" --json "$OUT/$part.json" --plot "$OUT/$part.png" "$@" 2>&1 | grep -v Warn
}
for part in ${PARTS:?name the parts (see the header)}; do
  case $part in
    llama8k-rocket) sweep $part llama-3.1-8b 8192 1024 560 --config $R --concurrency 1 4 16 64 max ;;
    llama8k-dense) sweep $part llama-3.1-8b 8192 1024 560 --config $D --concurrency 1 4 16 64 max ;;
    llama32k-rocket-low) sweep $part llama-3.1-8b 32768 4096 560 --config $R --concurrency 1 4 16 ;;
    llama32k-rocket-64) sweep $part llama-3.1-8b 32768 4096 560 --config $R --concurrency 64 ;;
    llama32k-rocket-max) sweep $part llama-3.1-8b 32768 4096 570 --config $R --concurrency max ;;
    llama32k-dense-low) sweep $part llama-3.1-8b 32768 4096 560 --config $D --concurrency 1 4 ;;
    llama32k-dense-max) sweep $part llama-3.1-8b 32768 4096 570 --config $D --concurrency 16 max ;;
    llama32k-fp8kv-max) sweep $part llama-3.1-8b 32768 4096 570 --config configs/rocket-fp8kv.yaml \
                          --concurrency max --num-requests "${FP8_REQUESTS:-300}" ;;
    qwen32k-rocket-low) sweep $part qwen3-8b 32768 4096 560 --config $R --concurrency 1 4 16 ;;
    qwen32k-rocket-64) sweep $part qwen3-8b 32768 4096 560 --config $R --concurrency 64 ;;
    qwen32k-rocket-max) sweep $part qwen3-8b 32768 4096 570 --config $R --concurrency max ;;
    qwen32k-dense-low) sweep $part qwen3-8b 32768 4096 560 --config $D --concurrency 1 4 ;;
    qwen32k-dense-max) sweep $part qwen3-8b 32768 4096 570 --config $D --concurrency 16 max ;;
    kt-runs) timeout 300 python3 benchmarks/experiments/stage2_batch.py --batches 124 --json "$OUT/kt-runs.json" 2>&1 \
               | grep -v Warn ;;
    served-32k)
      source benchmarks/serve_env.sh || exit 1
      start_server rocket-32k $R --max_seq_len 36864 --max_num_tokens 34816 || exit 1
      timeout 560 python3 -m rocket_trtllm.bench serve --base-url "http://127.0.0.1:$PORT/v1" --label rocket \
        --input-len 32768 --output-len 4096 --num-prompts "${CONCURRENCY:?the offline 32k max point}" \
        --max-concurrency "$CONCURRENCY" --request-rate inf --duration "${DURATION:-400}" \
        --disconnect-fraction 0.1 --check --json "$OUT/served-32k.json"
      echo "rc=$?"; curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-served-32k.txt"
      kill "$server_pid"; wait "$server_pid" ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
