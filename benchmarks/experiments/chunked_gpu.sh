#!/usr/bin/env bash
# Issue 34 on the GPU, in one device call from the repo root (.whl carried): 60 requests of 8k-token prompts decoding
# while a 128k-token prompt arrives, prefilled in one step and in 8192-token chunks (benchmarks/experiments/chunked_itl.py;
# Llama-3.1-8B's shape, random weights), RocketKV then dense; then a lone 128k prompt prefilled in chunks by
# rocket-bench for its TTFT and peak memory beside the one-step figures (stage2_gpu.sh's b1 part). Each part has a
# time limit; PARTS picks some of: rocket dense lone steps (default: the first three). steps: each step's time of a 128k
# prompt prefilled beside one decoding request, in one step and in chunks, RocketKV then dense.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
PARTS=${PARTS:-"rocket dense lone"}
source benchmarks/device_env.sh || exit 1
ITL="python3 benchmarks/experiments/chunked_itl.py --arch llama-3.1-8b --decoding 60 --short 8192 --new 256 --long 131072 --chunk 8192"
B="python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights --input-len 131072 --output-len 16 --batch-size 1"
for part in $PARTS; do
  echo "== $part"
  case $part in
    rocket) timeout 230 $ITL --config configs/rocket-long-context.yaml --json "$OUT/itl-rocket.json" 2>&1 | tail -3 ;;
    dense) timeout 230 $ITL --config configs/dense.yaml --json "$OUT/itl-dense.json" 2>&1 | tail -3 ;;
    lone) for c in rocket-long-context dense; do
            timeout 60 $B --config configs/$c.yaml --enable_chunked_prefill --max_num_tokens 8192 \
              --json "$OUT/lone-chunked-$c.json" 2>&1 | tail -1
          done ;;
    steps) for c in rocket-long-context dense; do
             timeout 120 python3 benchmarks/experiments/chunked_itl.py --arch llama-3.1-8b --decoding 1 --short 64 --new 64 \
               --long 131072 --chunk 8192 --config configs/$c.yaml --json "$OUT/steps-$c.json" 2>&1 | tail -2
           done ;;
  esac
done
